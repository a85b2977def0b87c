"""The merge over a family of scenarios: simulate each (resumable), then score its merges.

For every scenario of a folder (``simulations/scenarios/family`` by default) the matrix
runs ``csfl simulate`` into ``OUT/<scenario>`` unless that run has finished every stage
(an unfinished one resumes from its catalog), then the merge report (``merge.json``
beside it). It prints, per scenario and task, the mean Dice of the task's own decoder,
of every merge rule and ablation, and of the best single decoder of each structure, and
names the worst task and the worst structure over the family. Long: a command for the
background, never a test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.io import atomic_write_json
from simulations.benchmarks.merge_report import BEST, COMPARED, OWN, merge_report, task_summary
from simulations.run import simulate
from simulations.scenario import BUILTIN, TEST_FOLDER, Scenario, load_scenario

FAMILY = BUILTIN / "family"
MATRIX = "matrix.json"


def family(folder: Path = FAMILY) -> list[Path]:
    """The scenario files of a family folder, by name."""
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        raise ValueError(f"{folder}: no scenario (*.toml) in the folder")
    return paths


def finished(spec: Scenario, run: Path) -> bool:
    """Whether ``run`` holds a simulation of ``spec`` that ran every stage."""
    try:
        results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return len(results.get("stages", [])) == len(spec.stages)


def run_matrix(
    scenarios: Sequence[Path],
    out: Path,
    cpus: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Simulate (or resume) and score each scenario; returns ``{scenario: task_summary}``.

    Writes ``OUT/<scenario>/merge.json`` and a PNG per failing structure and case in
    ``OUT/<scenario>/failing/`` for each, and ``OUT/matrix.json`` for all (see
    :func:`record`).
    """
    table = {}
    for path in scenarios:
        spec = load_scenario(path)
        run = out / spec.name
        if not finished(spec, run):
            say(f"{spec.name}: simulating into {run}")
            simulate(spec, run, say=say, cpus=cpus)
        say(f"{spec.name}: merge report")
        bundle, tests = run / "catalog" / "bundle", run / "sites" / TEST_FOLDER
        report = merge_report(bundle, spec, tests, pictures=run / "failing")
        atomic_write_json(run / "merge.json", report)
        table[spec.name] = task_summary(report)
        record(out, spec.name, table[spec.name])
    return table


def record(out: Path, scenario: str, summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Put one scenario's summary into ``OUT/matrix.json``, keeping the other scenarios'.

    A family is often run a few scenarios at a time into one folder; an unreadable file
    starts afresh. Returns the whole table.
    """
    try:
        table = json.loads((out / MATRIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    table[scenario] = summary
    atomic_write_json(out / MATRIX, table)
    return table


def format_matrix(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: a row per scenario and task; then the worst task and structure."""
    methods = [OWN, *COMPARED, BEST]
    lines = [
        "| scenario | task | " + " | ".join(methods) + " | merged / best | worst structure |",
        "|---" * (len(methods) + 4) + "|",
    ]
    for scenario, tasks in table.items():
        for task, row in tasks.items():
            cells = [f"{row['dice'][m]:.3f}" for m in methods]
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            worst = f"{row['worst_structure']} ({-row['worst_loss']:+.3f})"
            lines.append(
                f"| {scenario} | {task} | " + " | ".join(cells) + f" | {ratio} | {worst} |"
            )
    rows = [(s, t, r) for s, tasks in table.items() for t, r in tasks.items()]
    if rows:
        s, t, r = min(rows, key=lambda x: x[2]["ratio"] if x[2]["ratio"] is not None else 1.0)
        lines.append(f"\nWorst task: {s}/{t}, merged {r['ratio']:.2f}x its best single decoders")
        s, t, r = max(rows, key=lambda x: x[2]["worst_loss"])
        lines.append(
            f"Worst structure: {s}/{t}/{r['worst_structure']}, {r['worst_loss']:.3f} Dice "
            "below its best single decoder"
        )
    return "\n".join(lines)
