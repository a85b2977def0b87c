"""The ``csfl`` command line: its one composition root, and the simulations' own commands.

Each command lives with its users: a hospital's (``site check``, ``predict``) in
``client.cli``, the coordinator's (``plan check``, ``catalog``, ``deploy-local``) in
``server.cli``, and the simulations' and benchmarks' below. This module sits on top of
the dependency graph (``core`` <- ``client``, ``server`` <- ``simulations``), so it alone
may gather them all. Every command imports its heavy packages (torch, MONAI, Flower,
nibabel) inside itself, so that ``csfl --help`` answers at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from client import cli as client_cli
from core.cli import user_errors
from server import cli as server_cli
from simulations.curves import Budget, CurveMethod

app = typer.Typer(
    help="continual-segment-fl: federated continual segmentation of whole-body CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
client_cli.add_commands(app)
server_cli.add_commands(app)


@app.command()
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
    from simulations.scenario import load_scenario, write_scenario

    with user_errors():
        spec = load_scenario(scenario)
        written = write_scenario(spec, out, size, cases, progress=sys.stderr.isatty())
    for site in written:
        typer.echo(
            f"{site.site}: {len(site.dataset.cases)} case(s) of task {site.task} "
            f"-> {site.dataset.root} (preview {site.preview})"
        )


@app.command()
def profile(
    network: Annotated[bool, typer.Option(help="Measure the network (about a minute).")] = True,
    phantoms: Annotated[bool, typer.Option(help="Time whole-body phantom generation.")] = True,
    gpu_widths: Annotated[
        bool, typer.Option("--gpu-widths", help="Profile nnU-Net's widths, not the CPU default.")
    ] = False,
    predict_size: Annotated[int, typer.Option(min=32, help="Side of the volume predicted.")] = 160,
    compile_step: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Also time the training step under torch.compile (its first step compiles).",
        ),
    ] = False,
    scale: Annotated[
        bool,
        typer.Option(
            "--scale",
            help="Predict a hospital-size CT with the wholebody143 network and 150 "
            "structures, streamed and plain (MONAI over the whole volume), each in its own "
            "process: peak memory and wall time.",
        ),
    ] = False,
    scale_scenario: Annotated[
        str | None,
        typer.Option(
            help="Whose plan's network and structures the --scale bundle has "
            "(default: the full-scale wholebody143)."
        ),
    ] = None,
    scale_shape: Annotated[tuple[int, int, int], typer.Option(help="Voxels of the --scale CT.")] = (
        512,
        512,
        1000,
    ),
    scale_limit_gb: Annotated[
        float, typer.Option(min=1.0, help="Stop a --scale process whose memory passes this.")
    ] = 6.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Measure sizes and speeds on this machine.

    Network parameters, training seconds per step and prediction time (random weights),
    the time to generate a whole-body phantom with every structure, and with ``--scale``
    the memory and time of predicting a hospital-size CT.
    """
    from dataclasses import replace

    from core.io import atomic_write_json
    from core.model import EncoderConfig
    from simulations.network_profile import (
        ProfileSettings,
        ScaleSettings,
        format_profile,
        profile_network,
        profile_phantoms,
        profile_prediction,
    )
    from simulations.scenario import load_scenario

    result: dict[str, object] = {}
    if network:
        config = EncoderConfig.gpu_default() if gpu_widths else EncoderConfig.cpu_default()
        result |= profile_network(
            ProfileSettings(config=config, predict_size=predict_size, compile=compile_step)
        )
    if phantoms:
        result["phantoms"] = profile_phantoms()
    if scale:
        settings = ScaleSettings(shape=scale_shape, limit_gb=scale_limit_gb)
        if scale_scenario is not None:
            with user_errors():
                load_scenario(scale_scenario)
            settings = replace(settings, scenario=scale_scenario)
        result |= profile_prediction(settings, progress=sys.stderr.isatty())
    typer.echo(format_profile(result))
    if json_out is not None:
        atomic_write_json(json_out, result)


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


@app.command()
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
    typer.echo(
        f"\nTotal {time.perf_counter() - start:.0f} s; results in {out / 'results.json'}, "
        f"model bundle in {out / 'catalog' / 'bundle'}"
    )


@app.command("trim-report")
def trim_report(
    scenario: Annotated[str, typer.Option(help="The scenario the run simulated.")] = "default",
    out: Annotated[Path, typer.Option("--out", "-o", help="The simulation's folder.")] = Path(
        "runs/default"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Compare each task's trimmed student with its teacher and with alternative students.

    Needs a finished ``csfl simulate`` folder. Trains three students per task centrally
    (searched + KD, searched without KD, uniform narrow 3d + KD) with the federated
    distillation's step count, and evaluates all on the held-out cases.
    """
    from core.io import atomic_write_json
    from simulations.scenario import load_scenario
    from simulations.trimming import format_report
    from simulations.trimming import trim_report as measure

    with user_errors():
        spec = load_scenario(scenario)
    result = measure(out, spec)
    typer.echo(format_report(result))
    if json_out is not None:
        atomic_write_json(json_out, result)


@app.command("merge-report")
def merge_report(
    scenario: Annotated[str, typer.Option(help="The scenario the run simulated.")] = "default",
    out: Annotated[Path, typer.Option("--out", "-o", help="The simulation's folder.")] = Path(
        "runs/default"
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    pictures: Annotated[
        Path | None, typer.Option(help="Write a PNG per structure the merge fails in a case.")
    ] = None,
    domain_weight: Annotated[float | None, typer.Option(help="Score with this weight.")] = None,
    anomaly_weight: Annotated[float | None, typer.Option(help="Score with this weight.")] = None,
    redo_domains: Annotated[
        bool, typer.Option(help="Measure every decoder's domain again from its sites' CTs.")
    ] = False,
) -> None:
    """Compare merge rules on the held-out cases, healthy and tumour-bearing apart.

    Needs a finished ``csfl simulate`` folder. Dice per structure for the confidence
    merge, its variants (no gating, with the anomaly term), highest probability, last decoder
    wins, and the best decoder alone; overlapping structures are marked. With a weight or
    ``--redo-domains`` it scores a copy of the bundle so changed (``OUT/rebundled``).
    """
    from core.io import atomic_write_json
    from simulations.merge_report import format_merge_report
    from simulations.merge_report import merge_report as measure
    from simulations.rebundle import rebundle
    from simulations.scenario import TEST_FOLDER, load_scenario

    with user_errors():
        spec = load_scenario(scenario)
        bundle = out / "catalog" / "bundle"
        if redo_domains or domain_weight is not None or anomaly_weight is not None:
            bundle = rebundle(out, spec, domain_weight, anomaly_weight, redo_domains)
        result = measure(bundle, spec, out / "sites" / TEST_FOLDER, pictures)
    typer.echo(format_merge_report(result))
    if json_out is not None:
        atomic_write_json(json_out, result)


@app.command("merge-matrix")
def merge_matrix(
    scenarios: Annotated[
        Path | None,
        typer.Option(help="A folder of scenario TOMLs (default: the bundled family)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the runs.")] = Path(
        "runs/family"
    ),
    cpus: Cpus = None,
) -> None:
    """Simulate every scenario of a family and compare the merges on each (hours).

    Resumable: a finished run is kept, an interrupted one resumes. Prints per scenario and
    task the own decoder, every merge and ablation, the best single decoders, and the
    worst task and structure; writes ``OUT/matrix.json``.
    """
    from simulations.merge_matrix import FAMILY, family, format_matrix, run_matrix

    with user_errors():
        paths = family(scenarios or FAMILY)
    typer.echo(format_matrix(run_matrix(paths, out, cpus, say=typer.echo)))


@app.command()
def benchmark(
    scenario: Annotated[str, typer.Option(help="A bundled scenario name or a TOML path.")] = (
        "default"
    ),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Default: runs/bench-NAME.")] = (
        None
    ),
    quick: Annotated[
        bool, typer.Option(help="A few steps per task for every method (a smoke test).")
    ] = False,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated subset, e.g. continual,upper_bound.")
    ] = None,
    budget: Annotated[
        Budget,
        typer.Option(help="scenario: the scenario's rounds; plateau: the curves' plateaus."),
    ] = "scenario",
    curves: Annotated[
        Path | None, typer.Option(help="csfl curve's folder (upper-bound curves), for plateau.")
    ] = None,
    cpus: Cpus = None,
    overrides: SetOption = None,
) -> None:
    """Compare this method, its ablations, the references, fine-tuning, LwF and MiB.

    Writes OUT/benchmark.json (every figure), OUT/report.md and PNG plots; each method's
    result is kept as OUT/<method>.json, and a rerun reuses them. With --budget plateau,
    every central method trains each task for its upper-bound curve's plateau budget
    and the federated rounds are scaled to match.
    """
    from server.plan import parse_plan
    from simulations.benchmark import ORDER, run_benchmark
    from simulations.run import plan_document
    from simulations.scenario import load_scenario, parse_settings, with_federation

    with user_errors():
        changed = parse_settings(overrides or ())
        spec = with_federation(load_scenario(scenario), changed)
        parse_plan(plan_document(spec), f"scenario {spec.name}")  # a bad --set, before any work
        chosen = tuple(m.strip() for m in methods.split(",")) if methods else ORDER
        unknown = [m for m in chosen if m not in ORDER]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; expected some of {', '.join(ORDER)}")
        if (budget == "plateau") != (curves is not None):
            raise ValueError("--curves: give the curves' folder with --budget plateau (only)")
        if curves is not None and not curves.is_dir():
            raise ValueError(f"{curves}: expected csfl curve's folder")
    folder = out or Path("runs") / f"bench-{spec.name}"
    start = time.perf_counter()
    with user_errors():
        run_benchmark(
            spec,
            folder,
            quick,
            chosen,
            progress=sys.stderr.isatty(),
            budget=budget,
            curves=curves,
            cpus=cpus,
            settings=changed,
        )
    typer.echo((folder / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"benchmark done in {time.perf_counter() - start:.0f} s")


@app.command()
def curve(
    task: Annotated[str, typer.Option(help="The task (joint: also 'all').")],
    scenario: Annotated[str, typer.Option(help="A built-in scenario or a TOML path.")] = "default",
    method: Annotated[CurveMethod, typer.Option(help="What learns.")] = "upper_bound",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the curves.")] = Path(
        "runs/curves"
    ),
    start_steps: Annotated[int, typer.Option(min=1, max=1_000_000, help="First budget.")] = 250,
    max_doublings: Annotated[int, typer.Option(min=0, max=12, help="Doublings at most.")] = 4,
    tolerance: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="A doubling adding less mean Dice ends it.")
    ] = 0.01,
    catalog: Annotated[
        Path | None, typer.Option(help="A finished simulation's catalog (decoder only).")
    ] = None,
    sites: Annotated[
        Path | None, typer.Option(help="The scenario's phantoms (default OUT/sites, written once).")
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Train a method at budgets N, 2N, 4N, ... until doubling stops paying; find its plateau.

    Each budget is its own run from the same seed (its own learning-rate schedule),
    scored by mean Dice on the task's held-out cases. Writes
    OUT/curve-<method>-<task>.json (per budget: steps, CPU and wall seconds of the
    training, Dice) and a PNG; a rerun trains only the budgets still missing.
    """
    from simulations.curve_trainers import run_curve
    from simulations.curves import CurveSettings

    settings = CurveSettings(start_steps, max_doublings, tolerance)
    with user_errors():
        doc = run_curve(
            scenario,
            method,
            task,
            out,
            settings,
            sites,
            catalog,
            typer.echo,
            sys.stderr.isatty(),
            overrides or (),
        )
    typer.echo(f"plateau budget: {doc['plateau_steps']} steps")


if __name__ == "__main__":
    app()
