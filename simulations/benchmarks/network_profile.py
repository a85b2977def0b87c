"""``csfl profile``: size, training speed and prediction speed of the network on this machine.

Weights are random: speed does not depend on what a network has learnt. Prediction runs
on a synthetic CT at its own spacing (no resampling), comparing one bundle with N
decoders (the encoder runs once per window) against N separate encoder+decoder models.
At hospital scale: :mod:`simulations.benchmarks.hospital_scale`.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.bundle import Bundle
from core.data.nifti import read_header, write_volume
from core.data.transforms import Preprocessing
from core.device import autocast, native_bf16
from core.inference import predict_volume
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from core.model.cost import count_parameters
from simulations.phantoms import make_case

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
