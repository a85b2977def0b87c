"""MkDocs hook: the pages whose facts live in the code are written from the code.

A page holds a marker line and the build puts the generated text in its place:

- ``<!-- generated: plan-keys -->``: every plan key, from the typed plan's own records
  (:mod:`server.plan`, the phases' settings), with its type, default, bounds and meaning;
- ``<!-- generated: cli -->``: every ``csfl`` command with its usage, help and options,
  from the typer application that :mod:`csfl` composes;
- ``<!-- generated: api PACKAGE -->``: a mkdocstrings block for every module of the
  package, so a new module is in the API reference without anyone listing it.

So a setting or a flag is declared once, in the code, and the docs cannot drift from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

PLAN_MARKER = "<!-- generated: plan-keys -->"
CLI_MARKER = "<!-- generated: cli -->"
API_MARKER = re.compile(r"<!-- generated: api (\S+) -->")


ROOT = Path(__file__).resolve().parents[2]


def on_config(config: Any) -> None:
    """Read the code of the checkout the docs are built from, not an installed copy."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the generated text in place of each marker line."""
    if PLAN_MARKER in markdown:
        markdown = markdown.replace(PLAN_MARKER, plan_keys())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return API_MARKER.sub(lambda m: api_blocks(m.group(1)), markdown)


def api_blocks(package: str) -> str:
    """``::: module`` for every module of ``package`` (its ``__init__`` aside), in path order."""
    folder = ROOT / package.replace(".", "/")
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in sorted(folder.rglob("*.py"))
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    ]
    return "\n\n".join(f"::: {module}" for module in modules)


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        inner = _type_name(args[0])
        return (
            f"list of {inner}"
            if len(args) == 2 and args[1] is Ellipsis
            else f"{len(args)} x {inner}"
        )
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(kind))
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(kind, str(kind))


def _value(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds(field: Any) -> str:
    if field.lo is None and field.hi is None:
        return ""
    unit = " characters" if field.kind is str else ""
    lo = "" if field.lo is None else _number(field.lo)
    hi = "" if field.hi is None else _number(field.hi)
    return f"{lo} to {hi}{unit}"


def _table(record: type) -> str:
    from core.records import fields_of

    rows = ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for field in fields_of(record):
        default = _value(field.default)
        if field.fallback:
            default += f" (else `{field.fallback}`)"
        cells = [f"`{field.key}`", _type_name(field.kind), default, _bounds(field), field.doc]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def plan_keys() -> str:
    """Markdown tables of every plan key, one per record, in the plan's own order."""
    from core.local.private import Privacy
    from core.phases import PHASES
    from core.protocol import Optimiser
    from server.plan import AggregationSettings, ModelSection, TaskSection, TrainingSection

    def doc(record: type) -> str:
        return (record.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    parts = [
        f"## `[model]`\n\n{doc(ModelSection)}\n\n{_table(ModelSection)}",
        f"## `[training]`\n\n{doc(TrainingSection)}\n\n{_table(TrainingSection)}",
        "## `[[tasks]]`\n\nOne table per task. Besides the keys below, `sites` is a list of "
        'site names or `"any"` (the default: every site that labels the structures).',
        f"### The task\n\n{_table(TaskSection)}",
        f"### Optimiser\n\n{doc(Optimiser)}\n\n{_table(Optimiser)}",
        f"### Aggregation\n\n{doc(AggregationSettings)}\n\n{_table(AggregationSettings)}",
        f"### Privacy\n\n{doc(Privacy)}\n\n{_table(Privacy)}",
    ]
    seen: set[type] = set()
    for phase in PHASES.values():
        record = phase.settings_type
        if record in seen:
            continue
        seen.add(record)
        users = [n for n, p in PHASES.items() if p.settings_type is record]
        parts.append(f"### Phase `{'` / `'.join(users)}`\n\n{doc(record)}\n\n{_table(record)}")
    return "\n\n".join(parts)


def _command_section(path: str, command: Any, ctx: Any) -> list[str]:
    import click

    if isinstance(command, click.Group):
        out = []
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            sub_ctx = click.Context(sub, info_name=name, parent=ctx)
            out += _command_section(f"{path} {name}", sub, sub_ctx)
        return out
    usage = " ".join(command.collect_usage_pieces(ctx))
    argument_help = _argument_help(command)
    lines = [f"## `{path}`", "", f"```\n{path} {usage}\n```", "", (command.help or "").strip(), ""]
    rows = []
    for param in command.params:
        if param.name == "help":
            continue
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        if isinstance(param, click.Argument):
            names = f"`{param.human_readable_name}` (argument)"
        default = param.default if not callable(param.default) else None
        shown = "" if default in (None, (), []) or param.required else f"`{default}`"
        text = getattr(param, "help", None) or argument_help.get(param.name or "", "")
        help_text = text.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {names} | {help_text} | {shown} |")
    if rows:
        lines += ["| option | meaning | default |", "|---|---|---|", *rows, ""]
    return lines


def _argument_help(command: Any) -> dict[str, str]:
    """Typer keeps an argument's help in the annotation of the command's function."""
    function = inspect.unwrap(command.callback)
    out = {}
    for name, hint in typing.get_type_hints(function, include_extras=True).items():
        infos = [m for m in getattr(hint, "__metadata__", ()) if getattr(m, "help", None)]
        if infos:
            out[name] = infos[0].help
    return out


def cli_reference() -> str:
    """Every ``csfl`` command: usage, help and options, as typer declares them."""
    import click
    import typer

    from csfl import app

    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="csfl")
    return "\n".join(_command_section("csfl", root, ctx))
