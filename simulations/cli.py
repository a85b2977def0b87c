"""The simulation runner's commands: ``csfl phantoms`` and ``csfl simulate``.

Each command imports its heavy packages (torch, MONAI, Flower, nibabel) inside itself,
so that ``csfl --help`` answers at once; :mod:`csfl` gathers these commands with every
other role's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from core.cli import user_errors

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="KEY=VALUE: replaces a key of the scenario's federation table (repeatable), "
        "e.g. precision=bf16, server_lr=3.",
    ),
]
Cpus = Annotated[
    int | None,
    typer.Option(min=1, help="Cores the simulated sites share (default: all the machine's)."),
]


def phantoms(
    scenario: Annotated[
        str, typer.Option(help="A built-in scenario (tiny, default, wholebody143) or a TOML path.")
    ] = "tiny",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the sites' data.")] = Path(
        "phantoms"
    ),
    size: Annotated[
        int | None, typer.Option(min=32, help="Voxels per side (default: the scenario's).")
    ] = None,
    cases: Annotated[
        int | None, typer.Option(min=1, help="Cases per site (default: the scenario's).")
    ] = None,
) -> None:
    """Write a scenario's synthetic hospitals: one nnU-Net v2 dataset and preview PNG per site.

    Also writes each task's held-out test cases under OUT/test. The same scenario and
    seed give the same bytes.
    """
    from simulations.scenario import load_scenario
    from simulations.sites import write_scenario

    with user_errors():
        spec = load_scenario(scenario)
        written = write_scenario(spec, out, size, cases, progress=sys.stderr.isatty())
    for site in written:
        typer.echo(
            f"{site.site}: {len(site.dataset.cases)} case(s) of task {site.task} "
            f"-> {site.dataset.root} (preview {site.preview})"
        )


def simulate(
    scenario: Annotated[str, typer.Option(help="A built-in scenario or a TOML path.")] = "default",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for data, catalog, results.")
    ] = Path("runs/default"),
    cpus: Cpus = None,
) -> None:
    """Simulate hospitals joining stage by stage, through Flower's Simulation Engine.

    Writes the sites' data (once), runs every stage, and prints the per-task,
    per-structure Dice of the unified model on held-out cases of every task so far.
    """
    from simulations.evaluate import format_table
    from simulations.run import simulate as run_simulation
    from simulations.scenario import load_scenario

    with user_errors():
        spec = load_scenario(scenario)
    start = time.perf_counter()
    report = run_simulation(spec, out, say=typer.echo, cpus=cpus)
    last = report.stages[-1]
    typer.echo(f"\nDice after stage {last['stage']} (held-out cases):\n")
    typer.echo(format_table(last["dice"]))
    typer.echo("\nUpload per site, against FedAvg of the whole model (fp32) every round:")
    for task, up in last["uploads"].items():
        sent = sum(up["bytes_up_per_site"].values()) / max(len(up["bytes_up_per_site"]), 1)
        full = up["full_model_fedavg_bytes_per_site"]
        typer.echo(
            f"  {task}: {sent / 2**20:.2f} MiB vs {full / 2**20:.2f} MiB ({up['ratio']:.0%})"
        )
    for task, spent in last.get("privacy", {}).items():
        epsilon = ", ".join(f"{site} {e:.2f}" for site, e in spent["epsilon"].items())
        typer.echo(f"  {task}: trained under DP, epsilon {epsilon} at delta {spent['delta']:g}")
    typer.echo(
        f"\nTotal {time.perf_counter() - start:.0f} s; results in {out / 'results.json'}, "
        f"model bundle in {out / 'catalog' / 'bundle'}"
    )


def add_commands(root: typer.Typer) -> None:
    """Add ``phantoms`` and ``simulate`` to ``root``."""
    root.command()(phantoms)
    root.command()(simulate)
