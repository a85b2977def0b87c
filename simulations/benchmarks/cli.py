"""The benchmark suite's commands: ``benchmark``, ``curve``, ``profile``, the reports.

Heavy packages are imported inside each command, so that ``csfl --help`` answers at
once; :mod:`csfl` gathers these commands with every other role's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from core.cli import user_errors
from simulations.benchmarks.curves import Budget, CurveMethod
from simulations.cli import Cpus, SetOption

# the options of every report on a finished ``csfl simulate`` folder
RunScenario = Annotated[str, typer.Option(help="The scenario the run simulated.")]
RunFolder = Annotated[Path, typer.Option("--out", "-o", help="The simulation's folder.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")]


def show(text: str, result: object, json_out: Path | None) -> None:
    """Print a report's table; with ``--json``, also write its figures there."""
    typer.echo(text)
    if json_out is not None:
        from core.io import atomic_write_json

        atomic_write_json(json_out, result)


def profile(
    network: Annotated[bool, typer.Option(help="Measure the network (about a minute).")] = True,
    phantoms: Annotated[bool, typer.Option(help="Time whole-body phantom generation.")] = True,
    gpu_widths: Annotated[
        bool, typer.Option("--gpu-widths", help="Profile nnU-Net's widths, not the CPU default.")
    ] = False,
    predict_size: Annotated[int, typer.Option(min=32, help="Side of the volume predicted.")] = 160,
    throughput: Annotated[
        bool,
        typer.Option(
            help="FLOPs and GFLOP/s of a training step (broken down) and a prediction "
            "window, against a 3D convolution's GFLOP/s in the same process."
        ),
    ] = True,
    patch: Annotated[
        int, typer.Option(min=16, max=256, help="Training patch side for --throughput.")
    ] = 48,
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
    scale_approach: Annotated[
        list[str] | None,
        typer.Option(
            help="What predicts the --scale CT (repeat; default streamed and plain): "
            "streamed (csfl predict), streamed_fp32 (the same with --precision fp32), "
            "plain (MONAI over the whole volume), nnunet (nnU-Net "
            "v2's predictor on the CT as it is), nnunet_resampled (nnU-Net on the CT "
            "resampled to the plan's spacing first, as TotalSegmentator runs it)."
        ),
    ] = None,
    scale_decoders: Annotated[
        str,
        typer.Option(
            help="The --scale bundle's decoders: teacher (full width) or trimmed (the widest "
            "uniform student within each task's size budget, as registration keeps one)."
        ),
    ] = "teacher",
    json_out: JsonOut = None,
) -> None:
    """Measure sizes and speeds on this machine.

    Network parameters, training seconds per step and prediction time (random weights),
    the time to generate a whole-body phantom with every structure, and with ``--scale``
    the memory and time of predicting a hospital-size CT.
    """
    from dataclasses import replace

    import torch

    from core.model import EncoderConfig
    from simulations.benchmarks.hospital_scale import (
        ScaleSettings,
        check_scale,
        profile_prediction,
    )
    from simulations.benchmarks.network_profile import (
        ProfileSettings,
        format_profile,
        profile_network,
        profile_phantoms,
    )

    settings = ScaleSettings(shape=scale_shape, limit_gb=scale_limit_gb, decoders=scale_decoders)
    if scale_approach:
        settings = replace(settings, approaches=tuple(scale_approach))
    if scale and scale_scenario is not None:
        settings = replace(settings, scenario=scale_scenario)
    if scale:
        with user_errors():  # before any measurement: a typo costs nothing
            check_scale(settings)
    result: dict[str, object] = {}
    config = EncoderConfig.gpu_default() if gpu_widths else EncoderConfig.cpu_default()
    if network:
        result |= profile_network(
            ProfileSettings(config=config, predict_size=predict_size, compile=compile_step)
        )
    if throughput:
        from core.device import native_bf16
        from simulations.benchmarks.throughput import profile_throughput

        precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
        with user_errors():
            result["throughput"] = profile_throughput(config, patch, 64, precision)
    if phantoms:
        result["phantoms"] = profile_phantoms()
    if scale:
        result |= profile_prediction(settings, progress=sys.stderr.isatty())
    show(format_profile(result), result, json_out)


def trim_report(
    scenario: RunScenario = "default",
    out: RunFolder = Path("runs/default"),
    json_out: JsonOut = None,
) -> None:
    """Compare each task's trimmed student with its teacher and with alternative students.

    Needs a finished ``csfl simulate`` folder. Trains three students per task centrally
    (searched + KD, searched without KD, uniform narrow 3d + KD) with the federated
    distillation's step count, and evaluates all on the held-out cases.
    """
    from simulations.benchmarks.trimming import format_report
    from simulations.benchmarks.trimming import trim_report as measure
    from simulations.scenario import load_scenario

    with user_errors():
        spec = load_scenario(scenario)
    result = measure(out, spec)
    show(format_report(result), result, json_out)


def privacy_audit(
    scenario: RunScenario = "default",
    out: RunFolder = Path("runs/default"),
    json_out: JsonOut = None,
) -> None:
    """Attack each task's decoders by membership inference: what they tell of the patients.

    Needs a finished ``csfl simulate`` folder. For the decoder the coordinator received (the
    training phase's, before trimming) and the bundle's, a loss-threshold attack tells the
    sites' training cases from the task's held-out cases of the same scanner: attack AUC
    (0.5 = chance) and the share of members found at 1% false positives, beside each
    task's spent epsilon.
    """
    from server.catalog import CatalogError
    from simulations.benchmarks.membership import format_audit
    from simulations.benchmarks.membership import privacy_audit as measure
    from simulations.scenario import load_scenario

    with user_errors(CatalogError, OSError):
        result = measure(out, load_scenario(scenario))
    show(format_audit(result), result, json_out)


def privacy_curve(
    scenario: Annotated[str, typer.Option(help="A bundled scenario name or a TOML path.")] = (
        "privacy"
    ),
    epsilon: Annotated[
        list[float] | None,
        typer.Option(min=0.01, max=100.0, help="A target epsilon per patient (repeat it)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where every run goes.")] = Path(
        "runs/privacy"
    ),
    public: Annotated[
        list[str] | None,
        typer.Option(help="A task trained without DP in every setting (repeat it)."),
    ] = None,
    json_out: JsonOut = None,
    cpus: Cpus = None,
    overrides: SetOption = None,
) -> None:
    """Train the scenario without DP and at each epsilon (default 8, 3, 1); Dice and leak.

    Each setting is a whole ``csfl simulate`` run (OUT/no_dp, OUT/epsilon_<e>, with
    ``--public`` OUT/epsilon_<e>_public_<tasks>), every phase of each private task under
    DP-SGD with the noise that spends the target at the task's smallest site; each run is
    scored and attacked by membership inference (``csfl privacy-audit``). Resumable: a
    finished setting (OUT/<setting>.json) is kept.
    """
    from simulations.benchmarks.privacy_curve import format_curve
    from simulations.benchmarks.privacy_curve import privacy_curve as measure
    from simulations.scenario import load_scenario, parse_settings, with_federation

    with user_errors():  # a plan that refuses DP (FedProx), or an unknown task, fails here
        spec = with_federation(load_scenario(scenario), parse_settings(overrides or ()))
        rows = measure(spec, epsilon or [8.0, 3.0, 1.0], out, typer.echo, cpus, public or ())
    show(format_curve(rows), rows, json_out)


def merge_report(
    scenario: RunScenario = "default",
    out: RunFolder = Path("runs/default"),
    json_out: JsonOut = None,
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
    from simulations.benchmarks.merge_report import format_merge_report
    from simulations.benchmarks.merge_report import merge_report as measure
    from simulations.benchmarks.rebundle import rebundle
    from simulations.scenario import TEST_FOLDER, load_scenario

    with user_errors():
        spec = load_scenario(scenario)
        bundle = out / "catalog" / "bundle"
        if redo_domains or domain_weight is not None or anomaly_weight is not None:
            bundle = rebundle(out, spec, domain_weight, anomaly_weight, redo_domains)
        result = measure(bundle, spec, out / "sites" / TEST_FOLDER, pictures)
    show(format_merge_report(result), result, json_out)


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
    from simulations.benchmarks.merge_matrix import FAMILY, family, format_matrix, run_matrix

    with user_errors():
        paths = family(scenarios or FAMILY)
    typer.echo(format_matrix(run_matrix(paths, out, cpus, say=typer.echo)))


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
    plateau: Annotated[
        list[str] | None,
        typer.Option(help="TASK=STEPS: a plateau measured before (repeat; beats --curves)."),
    ] = None,
    cpus: Cpus = None,
    overrides: SetOption = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Methods trained at once, each in its own process on its share "
            "of the cores (--cpus or all).",
        ),
    ] = 1,
) -> None:
    """Compare this method, its ablations, the references, fine-tuning, LwF and MiB.

    Writes OUT/benchmark.json (every figure), OUT/report.md and PNG plots; each method's
    result is kept as OUT/<method>.json, and a rerun reuses them. With --budget plateau,
    every central method trains each task for its upper-bound curve's plateau budget
    and the federated rounds are scaled to match. With --jobs N, N methods train at once
    (logs in OUT/logs/), then the report is written.
    """
    from simulations.benchmarks.benchmark import ORDER, run_benchmark, share_sites
    from simulations.benchmarks.budget import parse_plateaus
    from simulations.benchmarks.side_by_side import run_side_by_side, threads_each
    from simulations.scenario import load_scenario, parse_settings, with_federation

    with user_errors():
        changed = parse_settings(overrides or ())
        spec = with_federation(load_scenario(scenario), changed)  # a bad --set fails here
        chosen = tuple(m.strip() for m in methods.split(",")) if methods else ORDER
        unknown = [m for m in chosen if m not in ORDER]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; expected some of {', '.join(ORDER)}")
        plateaus = parse_plateaus(plateau or ())
        if (budget == "plateau") != (curves is not None or bool(plateaus)):
            raise ValueError("--curves/--plateau: give the plateaus with --budget plateau (only)")
        if curves is not None and not curves.is_dir():
            raise ValueError(f"{curves}: expected csfl curve's folder")
    folder = out or Path("runs") / f"bench-{spec.name}"
    start = time.perf_counter()
    if jobs > 1:
        share = threads_each(cpus or os.cpu_count() or 1, jobs)
        common = ["benchmark", "--scenario", scenario, "--out", str(folder), "--budget", budget]
        common += ["--quick"] * quick + ["--cpus", str(share)]
        common += [a for p in plateau or () for a in ("--plateau", p)]
        common += [a for s in overrides or () for a in ("--set", s)]
        common += ["--curves", str(curves)] if curves is not None else []
        entry = [sys.executable, "-m", "csfl"]
        share_sites(spec, folder.resolve(), typer.echo)  # once, before the children read them
        try:
            run_side_by_side(
                chosen,
                jobs,
                lambda method: [*entry, *common, "--methods", method],
                folder,
                {**os.environ, "OMP_NUM_THREADS": str(share)},
                say=typer.echo,
            )
        except RuntimeError as e:  # a method failed (not bad input): its log is named
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    with user_errors():
        run_benchmark(
            spec,
            folder,
            quick,
            chosen,
            progress=sys.stderr.isatty(),
            budget=budget,
            curves=curves,
            plateau=plateaus,
            cpus=cpus,
            settings=changed,
        )
    typer.echo((folder / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"benchmark done in {time.perf_counter() - start:.0f} s")


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
    from simulations.benchmarks.curve_trainers import run_curve
    from simulations.benchmarks.curves import CurveSettings

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


def gpu_check(
    out: Annotated[Path, typer.Option("--out", "-o", help="The figures (JSON).")] = Path(
        "gpu-check.json"
    ),
    device: Annotated[str, typer.Option(help="cuda, cuda:1; cpu for a dry run.")] = "cuda",
    demo_steps: Annotated[
        int | None, typer.Option(min=1, help="Train the demo's first stage this many steps.")
    ] = None,
    ct_shape: Annotated[tuple[int, int, int], typer.Option(help="Voxels of the CT.")] = (
        512,
        512,
        1000,
    ),
) -> None:
    """Time the demo's first stage, a wholebody143 step and prediction on a GPU.

    What ``scripts/gpu-check.sh`` runs after the CUDA tests, when a GPU is lent. Each
    figure has its wall time and peak GPU memory; its phantoms and bundle go to a
    temporary folder.
    """
    import tempfile

    import torch

    from simulations.benchmarks.gpu_check import gpu_check as measure

    with user_errors():
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device here (torch {torch.__version__})")
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(Path(tmp), chosen, demo_steps, ct_shape)
    show(json.dumps(figures, indent=2), figures, out)


def add_commands(root: typer.Typer) -> None:
    """Add the benchmarks' commands to ``root``."""
    root.command()(profile)
    root.command("trim-report")(trim_report)
    root.command("merge-report")(merge_report)
    root.command("privacy-audit")(privacy_audit)
    root.command("privacy-curve")(privacy_curve)
    root.command("merge-matrix")(merge_matrix)
    root.command()(benchmark)
    root.command()(curve)
    root.command("gpu-check")(gpu_check)
