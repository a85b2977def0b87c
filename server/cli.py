"""The coordinator's commands: ``plan check``, ``catalog``, ``app-folder``, ``deploy-local``, ...

Also ``fleet-gate``, the hospitals' only door into the SuperLink (``server.gate``).

Typed with typer; the catalog, the plan parser and Flower are imported inside the command
that needs them, so that ``csfl --help`` answers at once. :mod:`csfl` puts these
commands into ``csfl`` with :func:`add_commands`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.cli import fail, user_errors

if TYPE_CHECKING:
    from server.catalog import Catalog

catalog_app = typer.Typer(help="Inspect and export the decoder catalog.", no_args_is_help=True)
plan_app = typer.Typer(help="Check a task plan.", no_args_is_help=True)


def _open_catalog(folder: Path) -> Catalog:
    """An existing catalog (an index or at least a journal), never a new empty one.

    Raises:
        CatalogError: for a folder that holds neither.
    """
    from server.catalog import INDEX, JOURNAL, Catalog, CatalogError

    if not ((folder / INDEX).is_file() or (folder / JOURNAL).is_file()):
        raise CatalogError(f"{folder}: no {INDEX} or {JOURNAL}; expected a catalog folder")
    return Catalog(folder)


@catalog_app.command("ls")
def catalog_ls(catalog: Annotated[Path, typer.Argument(help="The catalog folder.")]) -> None:
    """List the encoder and every task's latest version; exit 1 if ``verify`` finds problems.

    A version that fails the checks is flagged and its figures are not shown.
    """
    from core.protocol import PRIVACY
    from core.scores import task_mean
    from server.catalog import INDEX, CatalogError

    with user_errors(CatalogError):
        cat = _open_catalog(catalog)
        problems = cat.verify()
        tasks, events = cat.tasks(), cat.events()
    encoder = cat.index.get("encoder")
    state = "none yet" if not (catalog / INDEX).is_file() else "none"
    typer.echo(f"encoder: {encoder['weights_sha256'][:16] if encoder else state}")
    for task in tasks:
        latest = task["versions"][-1]
        mine = f"{INDEX}: task {task['name']!r}"
        if any(p.startswith(mine) for p in problems):
            typer.echo(f"{task['name']:<20} v{latest['version']}  fails its checks (below)")
            continue
        dice = task_mean(latest["metrics"].get("dice", {}))
        mean = "-" if dice is None else f"{dice:.3f}"
        sites = ", ".join(latest["provenance"].get("sites", []))
        privacy = latest["provenance"].get(PRIVACY)
        spent = (
            f"  DP: epsilon <= {max(privacy['epsilon'].values(), default=0.0):.2f} "
            f"at delta {privacy['delta']:g}"
            if privacy
            else ""
        )
        typer.echo(
            f"{task['name']:<20} v{latest['version']}  {len(task['structures'])} structures  "
            f"mean Dice {mean}  sites: {sites}{spent}"
        )
    if not tasks and events:
        typer.echo(f"no model registered yet; last journal event: {events[-1].get('event')}")
    for line in problems:
        typer.echo(f"problem: {line}")
    raise typer.Exit(1 if problems else 0)


@catalog_app.command("show")
def catalog_show(
    catalog: Annotated[Path, typer.Argument(help="The catalog folder.")],
    task: Annotated[str, typer.Argument(help="A task name.")],
) -> None:
    """Print a task's latest version (genotype, metrics, provenance) and its journal."""
    from server.catalog import CatalogError

    with user_errors(CatalogError):
        cat = _open_catalog(catalog)
    entry = next((t for t in cat.tasks() if t["name"] == task), None)
    if entry is None:
        fail(f"{catalog}: no task {task!r}; tasks: {[t['name'] for t in cat.tasks()]}")
    events = [e for e in cat.events() if e.get("task") == task]
    typer.echo(json.dumps({"task": entry, "journal": events}, indent=2))


@catalog_app.command("export")
def catalog_export(
    catalog: Annotated[Path, typer.Argument(help="The catalog folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")],
) -> None:
    """Export the unified model (encoder + every task's latest decoder) as a bundle."""
    from server.catalog import CatalogError

    with user_errors(CatalogError):
        manifest = _open_catalog(catalog).export_bundle(out)
    typer.echo(f"wrote {manifest}")


@catalog_app.command("verify")
def catalog_verify(catalog: Annotated[Path, typer.Argument(help="The catalog folder.")]) -> None:
    """Check every hash, metric, genotype and checkpoint; exit 1 listing what is wrong.

    A catalog that holds only a journal (a run before its first registration) is sound.
    """
    from server.catalog import CatalogError

    with user_errors(CatalogError):
        problems = _open_catalog(catalog).verify()
    for line in problems:
        typer.echo(line)
    typer.echo(f"{catalog}: {len(problems)} problem(s)" if problems else f"{catalog}: ok")
    raise typer.Exit(1 if problems else 0)


@plan_app.command("check")
def plan_check(plan: Annotated[Path, typer.Argument(help="The plan TOML.")]) -> None:
    """Validate a plan and print its tasks in order."""
    from core.phases import PHASES
    from server.orchestrator import lifecycle
    from server.plan import load_plan

    with user_errors():
        parsed = load_plan(plan)
    spacing = list(parsed.preprocessing.spacing_mm)
    typer.echo(f"encoder {list(parsed.encoder.widths)}, patch {list(parsed.patch)}, {spacing} mm")
    for i, t in enumerate(parsed.tasks):
        sites = "any site that labels them" if t.sites is None else ", ".join(t.sites)
        phases = [PHASES[s.name] for s in lifecycle(t, i == 0) if s.name in PHASES]
        budget = ", ".join(
            f"{p.name} {t.of(p).rounds}x{t.of(p).steps}" for p in phases if t.of(p).steps
        )
        typer.echo(
            f"{t.name}: {len(t.structures)} structures; {budget}; lr {t.optimiser.lr}; "
            f"sites: {sites} ({t.section.min_sites}+)"
        )


def deploy_local(
    plan: Annotated[Path, typer.Option(help="The plan TOML.")],
    catalog: Annotated[Path, typer.Option(help="The catalog folder (created if missing).")],
    site: Annotated[list[str], typer.Option(help="NAME=DATA_DIR, once per site.")],
    home: Annotated[Path, typer.Option(help="Flower home for logs and state.")] = Path(
        ".flwr-local"
    ),
    tls: Annotated[
        bool,
        typer.Option(help="TLS and SuperNode authentication, keys registered per site."),
    ] = False,
    gate: Annotated[
        bool, typer.Option(help="SuperNodes connect through a fleet gate, as hospitals do.")
    ] = False,
) -> None:
    """Run the app on 127.0.0.1: a SuperLink, one SuperNode per site, then ``flwr run``.

    The same processes a real deployment runs, on one machine; with ``--tls`` also its
    security: a CA and SuperLink certificate, one key per site registered under the site's
    name, SuperNodes that authenticate with it (all under ``HOME``). The run starts once
    every SuperNode is online; every process is stopped at the end.
    """
    from core.describe import SITE_NAME
    from server.catalog import JOURNAL
    from server.local import LocalFederation
    from server.local_env import APP_DIR
    from server.orchestrator import last_run_summary

    nodes = []
    for entry in site:
        name, _, data = entry.partition("=")
        if not SITE_NAME.fullmatch(name) or not data:
            fail(f"--site {entry!r}: expected NAME=DATA_DIR (NAME: letters, digits, '_.-')")
        nodes.append({"site": name, "data-dir": str(Path(data).resolve())})
    config = {"plan": str(plan.resolve()), "catalog": str(catalog.resolve())}
    federation = LocalFederation(home, False, nodes, tls=tls, gate=gate)
    with user_errors(RuntimeError), federation:
        security = "TLS, SuperNode authentication" if tls else "insecure"
        door = f", fleet gate on {federation.node_address}" if gate else ""
        typer.echo(
            f"SuperLink on {federation.address} ({security}){door}; "
            f"{len(nodes)} SuperNode(s) online; running the app"
        )
        result = federation.run(APP_DIR, config)
    typer.echo(result.stdout[-4000:])
    if (catalog / JOURNAL).is_file():  # the ServerApp may have failed before writing one
        summary = last_run_summary(_open_catalog(catalog).events())
        typer.echo("\n".join(["per task:", *summary]))
    if result.returncode != 0:
        fail(f"flwr run: {result.stderr.strip()[-2000:]}")


def app_folder(
    out: Annotated[Path, typer.Argument(help="A new (or empty) folder for the app.")],
) -> None:
    """Write the Flower app alone (pyproject.toml and its packages) for ``flwr run OUT``.

    ``flwr run`` reads every file under the folder it is given before it keeps the app's,
    a virtual environment inside the project included (about 10 s per run).
    """
    from server.local_env import APP_DIR, stage_app

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out}: expected a new or empty folder")
    with user_errors(RuntimeError):
        stage_app(APP_DIR, out)
    typer.echo(f"wrote the app to {out}; run it with: flwr run {out} <connection> --stream")


def fleet_gate(
    listen: Annotated[str, typer.Option(help="HOST:PORT that hospitals connect to.")],
    superlink: Annotated[
        str, typer.Option(help="The SuperLink's HOST:PORT, bound to loopback.")
    ] = "127.0.0.1:8000",
    ssl_ca_certfile: Annotated[
        Path | None, typer.Option(help="The CA of the SuperLink's certificate.")
    ] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="The gate's certificate (the public host name).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's key.")] = None,
) -> None:
    """Pass hospitals' SuperNodes to the SuperLink and nothing else (the Fleet API alone).

    Run the SuperLink with ``--host 127.0.0.1`` and this gate on the public address: a
    hospital can then connect its SuperNode but cannot register keys, start or stop runs
    or list nodes (403). Give the three certificate files for TLS (both sides), none for a
    test without it.
    """
    from server.gate import serve_gate

    files = (ssl_ca_certfile, ssl_certfile, ssl_keyfile)
    if any(files) and not all(files):
        fail("--ssl-ca-certfile, --ssl-certfile and --ssl-keyfile: give all three or none")
    for path in filter(None, files):
        if not path.is_file():
            fail(f"{path}: no such file")
    for option, value in (("--listen", listen), ("--superlink", superlink)):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            fail(f"{option} {value!r}: expected HOST:PORT")
    host, _, port = listen.rpartition(":")
    serve_gate(host, int(port), superlink, *files)


def add_commands(app: typer.Typer) -> None:
    """Add ``plan check``, ``catalog ...``, ``app-folder``, ``deploy-local``, ``fleet-gate``."""
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(plan_app, name="plan")
    app.command("app-folder")(app_folder)
    app.command("deploy-local")(deploy_local)
    app.command("fleet-gate")(fleet_gate)
