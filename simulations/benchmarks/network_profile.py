"""``csfl profile``: size, training speed and prediction speed of the network on this machine.

Weights are random: speed does not depend on what a network has learnt. Prediction runs
on a synthetic CT at its own spacing (no resampling), comparing one bundle with N
decoders (the encoder runs once per window) against N separate encoder+decoder models.
At hospital scale (:func:`profile_prediction`), a scenario plan's bundle predicts a
synthetic whole-body CT, streamed and plain, each in its own process for its peak memory.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.bundle import Bundle, save_bundle
from core.data.nifti import read_header, write_volume
from core.data.transforms import Preprocessing
from core.device import autocast, native_bf16
from core.inference import predict_volume
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from core.model.cost import count_parameters
from simulations.benchmarks.nnunet_side import APPROACHES as NNUNET_APPROACHES
from simulations.benchmarks.nnunet_side import require_nnunet, write_model
from simulations.phantoms import make_case

APPROACHES = ("streamed", "plain", *NNUNET_APPROACHES)  # each runs in its own process
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
# Four tasks of two structures each; like real tasks, some overlap.
TASK_STRUCTURES = [(ORGANS[i], ORGANS[(i + 1) % 4]) for i in range(4)]


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure."""

    config: EncoderConfig = field(default_factory=EncoderConfig.cpu_default)
    train_patch: int = 64
    train_steps: int = 6
    predict_size: int = 160
    roi: int = 64
    n_tasks: int = 4
    compile: bool = False  # also time the base step with torch.compile (and its compilation)


def _model(
    config: EncoderConfig, n_decoders: int, genotype: Genotype | None = None
) -> ContinualSegmenter:
    """An encoder with ``n_decoders`` decoders of ``genotype`` (default: the teacher)."""
    model = ContinualSegmenter(Encoder(config))
    genotype = genotype or Genotype.teacher(len(config.widths) - 1)
    for i in range(n_decoders):
        structures = TASK_STRUCTURES[i % len(TASK_STRUCTURES)]
        model.add_decoder(f"task{i + 1}", Decoder(config.widths, genotype, structures))
    return model


def _train_step_times(
    config: EncoderConfig,
    patch: int,
    steps: int,
    frozen: bool,
    precision: str = "fp32",
    compiled: bool = False,
) -> list[float]:
    """Wall seconds of ``steps + 1`` training steps; the first warms up (or compiles)."""
    model = _model(config, 1)
    if frozen:
        model.encoder.freeze()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(2, config.in_channels, patch, patch, patch)
    y = torch.randint(0, 3, (2, 1, patch, patch, patch))
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model.organ_logits(batch, "task1")

    step = torch.compile(forward) if compiled else forward
    times = []
    model.train()
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss = loss_fn(step(x), y[:, 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def _train_step_seconds(
    config: EncoderConfig, patch: int, steps: int, frozen: bool, precision: str = "fp32"
) -> float:
    return _median(_train_step_times(config, patch, steps, frozen, precision)[1:])


def _predict_seconds(bundle: Bundle, path: Path) -> float:
    start = time.perf_counter()
    predict_volume(bundle, path)
    return time.perf_counter() - start


def profile_network(settings: ProfileSettings) -> dict[str, Any]:
    """Measure and return every figure as JSON-ready data."""
    cfg = settings.config
    n = settings.n_tasks
    encoder, unified = Encoder(cfg), _model(cfg, n)
    student = Genotype.uniform("p3d", 0.5, len(cfg.widths) - 1)
    students = _model(cfg, n, student)
    teacher = unified.decoder("task1")
    result: dict[str, Any] = {
        "machine": machine(),
        "encoder_widths": list(cfg.widths),
        "parameters": {
            "encoder": count_parameters(encoder),
            "teacher_decoder": count_parameters(teacher),
            f"unified_{n}_decoders": count_parameters(unified),
            f"{n}_separate_models": n * count_parameters(_model(cfg, 1)),
            f"student_decoder_{student}": count_parameters(students.decoder("task1")),
            f"unified_{n}_students": count_parameters(students),
        },
        "train_seconds_per_step": {
            f"base_{settings.train_patch}^3_batch2": _train_step_seconds(
                cfg, settings.train_patch, settings.train_steps, frozen=False
            ),
            f"teacher_{settings.train_patch}^3_batch2": _train_step_seconds(
                cfg, settings.train_patch, settings.train_steps, frozen=True
            ),
        },
    }
    if native_bf16(torch.device("cpu")):  # emulated bf16 is far slower than fp32: not timed
        result["train_seconds_per_step"][f"base_{settings.train_patch}^3_batch2_bf16"] = (
            _train_step_seconds(
                cfg, settings.train_patch, settings.train_steps, frozen=False, precision="bf16"
            )
        )
    if settings.compile:
        fastest = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
        times = _train_step_times(
            cfg, settings.train_patch, settings.train_steps, False, fastest, compiled=True
        )
        step = f"base_{settings.train_patch}^3_batch2_{fastest}_compiled"
        result["train_seconds_per_step"][step] = _median(times[1:])
        result["train_seconds_per_step"][f"{step}_first_step"] = times[0]
    with tempfile.TemporaryDirectory() as tmp:
        case = make_case(0, ORGANS, "abdomen", settings.predict_size)
        path = write_volume(Path(tmp) / "ct.nii.gz", case.image, case.affine)
        prep = Preprocessing(spacing_mm=read_header(path).spacing)
        roi = (settings.roi,) * 3
        one = Bundle(_model(cfg, 1).eval(), prep, roi)
        many = Bundle(unified.eval(), prep, roi)
        singles = [Bundle(_model(cfg, 1).eval(), prep, roi) for _ in range(n)]
        result["predict_seconds"] = {
            "volume": f"{settings.predict_size}^3, roi {settings.roi}^3, overlap 0.25",
            "1_decoder": _predict_seconds(one, path),
            f"{n}_decoders_shared_encoder": _predict_seconds(many, path),
            f"{n}_separate_models": sum(_predict_seconds(b, path) for b in singles),
            f"{n}_students_shared_encoder": _predict_seconds(
                Bundle(students.eval(), prep, roi), path
            ),
        }
    return result


@dataclass(frozen=True)
class ScaleSettings:
    """A hospital-scale prediction to measure.

    Attributes:
        scenario: whose plan's network and structures the bundle has.
        shape: the CT's voxels.
        spacing_mm: the CT's voxel size.
        approaches: which of :data:`APPROACHES` to run, in order.
        limit_gb: a process whose resident memory passes this is stopped (its row says so).
    """

    scenario: str = "wholebody143"
    shape: tuple[int, int, int] = (512, 512, 1000)
    spacing_mm: tuple[float, float, float] = (0.8, 0.8, 1.5)
    approaches: tuple[str, ...] = ("streamed", "plain")
    limit_gb: float = 6.0


def profile_prediction(settings: ScaleSettings, progress: bool = True) -> dict[str, Any]:
    """Peak memory and wall time of each approach predicting one whole-body CT.

    Returns:
        ``{"prediction": {...}}`` for :func:`format_profile`: the setup, then per approach
        its peak resident memory (GB) and wall time (s), or why it stopped.
    """
    check_scale(settings)
    with tempfile.TemporaryDirectory() as tmp:
        bundle, n_structures = scale_bundle(settings.scenario, Path(tmp) / "bundle")
        nnunet = write_model(settings.scenario, Path(tmp) / "nnunet")
        ct = synthetic_ct(Path(tmp) / "ct.nii", settings.shape, settings.spacing_mm)
        figures: dict[str, Any] = {
            "setup": f"{settings.scenario}: {n_structures} structures; CT "
            f"{'x'.join(map(str, settings.shape))} at {settings.spacing_mm} mm",
        }
        for approach in settings.approaches:
            model = nnunet if approach in NNUNET_APPROACHES else bundle
            result = _measure_in_subprocess(approach, model, ct, settings.limit_gb, progress)
            for key, value in result.items():
                figures[f"{approach}_{key}"] = value
    return {"prediction": figures}


def check_scale(settings: ScaleSettings) -> None:
    """Refuse settings that cannot run, before anything is measured.

    Raises:
        ValueError: naming an unknown scenario or approach, or a missing ``nnunetv2``.
    """
    from simulations.scenario import load_scenario

    load_scenario(settings.scenario)
    bad = sorted(set(settings.approaches) - set(APPROACHES))
    if bad:
        raise ValueError(f"approaches {bad}: expected some of {', '.join(APPROACHES)}")
    if set(settings.approaches) & set(NNUNET_APPROACHES):
        require_nnunet()


def scale_bundle(scenario: str, folder: Path) -> tuple[Path, int]:
    """A bundle of the scenario plan's network and tasks, random weights; its structures."""
    from simulations.scenario import load_scenario

    plan = load_scenario(scenario).plan
    model = ContinualSegmenter(Encoder(plan.encoder))
    depth = len(plan.encoder.widths) - 1
    for task in plan.tasks:
        model.add_decoder(
            task.name, Decoder(plan.encoder.widths, Genotype.teacher(depth), task.structures)
        )
    save_bundle(Bundle(model.eval(), plan.preprocessing, plan.patch), folder)
    return folder, len({s for t in plan.tasks for s in t.structures})


def synthetic_ct(
    path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> Path:
    """An int16 CT: air around an elliptic body of soft tissue with lungs and a spine."""
    x = np.linspace(-1.0, 1.0, shape[0])[:, None]
    y = np.linspace(-1.0, 1.0, shape[1])[None, :]
    body = (x / 0.8) ** 2 + (y / 0.55) ** 2 <= 1.0
    lungs = ((np.abs(x) - 0.4) / 0.25) ** 2 + (y / 0.35) ** 2 <= 1.0
    spine = x**2 + ((y + 0.4) / 0.5) ** 2 <= 0.01
    rng = np.random.default_rng(0)
    image = np.full(shape, -1000, dtype=np.int16)
    chest = slice(shape[2] * 4 // 10, shape[2] * 7 // 10)  # the lungs' slices
    for z in range(shape[2]):
        ct = np.where(body, 40, -1000) + rng.normal(0, 20, shape[:2])
        if chest.start <= z < chest.stop:
            ct = np.where(lungs, -850, ct)
        image[..., z] = np.where(spine, 700, ct).astype(np.int16)
    return write_volume(path, image, np.diag([*spacing, 1.0]))


def _measure_in_subprocess(
    approach: str, bundle: Path, ct: Path, limit_gb: float, progress: bool
) -> dict[str, Any]:
    """Run one approach in a fresh process; stop it if its memory passes ``limit_gb``."""
    code = (
        "import json, sys; from simulations.benchmarks.network_profile import measure_prediction; "
        "print(json.dumps(measure_prediction(*sys.argv[1:4])))"
    )
    argv = [sys.executable, "-c", code, approach, str(bundle), str(ct)]
    # files, not pipes: a child that prints much (nnU-Net does) would block on a full pipe
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=None if progress else err, text=True)
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _resident_gb(child.pid))
            if peak > limit_gb:
                child.kill()
                child.wait()
                return {"stopped": f"resident memory passed {limit_gb} GB"}
            time.sleep(0.2)
        if child.returncode:
            err.seek(0)
            last = ([""] + [line for line in err.read().splitlines() if line.strip()])[-1]
            return {"failed": f"exit status {child.returncode}: {last.strip()[:200]}"}
        out.seek(0)
        result: dict[str, Any] = json.loads(out.read().strip().splitlines()[-1])
    return result


def _resident_gb(pid: int) -> float:
    """A process's resident memory now (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return kb / 2**20


def measure_prediction(approach: str, model: str, ct: str) -> dict[str, float]:
    """Predict ``ct`` by one approach in this process: its wall time and peak memory.

    ``streamed`` is :func:`core.inference.predict_volume`; ``plain`` runs MONAI's
    sliding windows over the whole volume with every output channel (as prediction did
    before streaming), then the same merge and restore; ``model`` is their bundle. The
    nnU-Net approaches (:mod:`simulations.benchmarks.nnunet_side`) take its model folder.
    """
    if approach in NNUNET_APPROACHES:
        from simulations.benchmarks.nnunet_side import predict

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            predict(approach, Path(model), Path(ct), Path(tmp))
            seconds = time.perf_counter() - start
        return _figures(seconds)
    from core.bundle import load_bundle

    bundle = load_bundle(model)
    start = time.perf_counter()
    if approach == "streamed":
        predict_volume(bundle, ct, progress=True)
    else:
        _plain_predict(bundle, Path(ct))
    return _figures(time.perf_counter() - start)


def _figures(seconds: float) -> dict[str, float]:
    """The peak resident memory of this process and ``seconds``: a row of the scale table."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return {"peak_rss_gb": round(peak_kb / 2**20, 2), "wall_seconds": round(seconds, 1)}


@torch.no_grad()
def _plain_predict(bundle: Bundle, ct: Path) -> None:
    """The whole-volume reference: every channel of every window held until the merge."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose

    from core.data import Case
    from core.data.transforms import IMAGE, preprocessing
    from core.inference import VolumeOutputs, combined_structures, merge_volume, restore
    from core.merge import DecoderVote

    model = bundle.model.eval()
    item = Compose(preprocessing(bundle.preprocessing, None))({"case": Case("input", ct)})

    def all_heads(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{t}/{k}": v for t, o in model(x).items() for k, v in o._asdict().items()}

    outs = sliding_window_inference(item[IMAGE][None], bundle.roi_size, 1, all_heads, 0.25)
    assert isinstance(outs, dict)
    votes = [
        DecoderVote.from_logits(
            t, d.structures, outs[f"{t}/organ"], outs[f"{t}/anomaly"], outs[f"{t}/confidence"]
        )
        for t, d in model.items()
    ]
    del outs
    structures = combined_structures(model)
    outputs = VolumeOutputs(votes, np.asarray(item[IMAGE].affine), read_header(ct))
    merged = merge_volume(outputs, structures, bundle.merge, bundle.calibration)
    restore(merged[0], outputs.affine, outputs.original, len(structures))


def profile_phantoms(sizes: tuple[int, ...] = (64, 128)) -> dict[str, Any]:
    """Seconds to generate one whole-body case with every drawable structure labelled."""
    from simulations.phantoms import LESIONS, drawable_structures

    names = drawable_structures()
    out: dict[str, Any] = {"structures": len(names)}
    for size in sizes:
        start = time.perf_counter()
        make_case(0, names, "whole_body", size, lesions=LESIONS, lesion_rate=1.0)
        out[f"whole_body_{size}^3_seconds"] = time.perf_counter() - start
    return out


def format_profile(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = ["| figure | value |", "|---|---|"]
    sections = (
        "parameters",
        "train_seconds_per_step",
        "predict_seconds",
        "throughput",
        "phantoms",
        "prediction",
    )
    for section in (s for s in sections if s in result):
        for key, value in _flat(result[section]).items():
            shown = (
                f"{value:,}"
                if isinstance(value, int)
                else f"{value:.2f}"
                if isinstance(value, float)
                else value
            )
            rows.append(f"| {section}: {key} | {shown} |")
    head = f"Machine: {machine()}"
    if "encoder_widths" in result:
        head += f"; encoder {result['encoder_widths']}"
    return head + "\n\n" + "\n".join(rows)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested figures as ``a: b: c`` keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}: ")
        else:
            out[f"{prefix}{key}"] = value
    return out


def machine() -> str:
    """The machine in words, for benchmark tables."""
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
