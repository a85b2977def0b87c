"""``csfl profile --scale``: predicting a hospital-size CT, each approach in its own process.

A scenario plan's bundle (random weights) predicts a synthetic whole-body CT: streamed
(``csfl predict``), plain (MONAI's sliding windows over the whole volume with every
channel), and, where installed, nnU-Net v2's own predictor
(:mod:`simulations.benchmarks.nnunet_side`); each in a fresh process, for its peak memory
and wall time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.bundle import Bundle, save_bundle
from core.data.nifti import read_header, write_volume
from core.inference import predict_volume
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.model.blocks import OPS
from core.model.cost import genotype_parameters
from core.model.genotype import WIDTH_CHOICES
from core.phases.search import budget_parameters
from simulations.benchmarks.nnunet_side import APPROACHES as NNUNET_APPROACHES
from simulations.benchmarks.nnunet_side import require_nnunet, write_model

STREAMED = {"streamed": "auto", "streamed_fp32": "fp32"}  # csfl predict, at --precision
APPROACHES = (*STREAMED, "plain", *NNUNET_APPROACHES)
DECODERS = ("teacher", "trimmed")


@dataclass(frozen=True)
class ScaleSettings:
    """A hospital-scale prediction to measure.

    Attributes:
        scenario: whose plan's network and structures the bundle has.
        shape: the CT's voxels.
        spacing_mm: the CT's voxel size.
        approaches: which of :data:`APPROACHES` to run, in order.
        limit_gb: a process whose resident memory passes this is stopped (its row says so).
        decoders: the bundle's decoders, one of :data:`DECODERS` (:func:`scale_bundle`).
    """

    scenario: str = "wholebody143"
    shape: tuple[int, int, int] = (512, 512, 1000)
    spacing_mm: tuple[float, float, float] = (0.8, 0.8, 1.5)
    approaches: tuple[str, ...] = ("streamed", "plain")
    limit_gb: float = 6.0
    decoders: str = "teacher"


def profile_prediction(settings: ScaleSettings, progress: bool = True) -> dict[str, Any]:
    """Peak memory and wall time of each approach predicting one whole-body CT.

    Returns:
        ``{"prediction": {...}}`` for :func:`format_profile`: the setup, then per approach
        its peak resident memory (GB) and wall time (s), or why it stopped.
    """
    check_scale(settings)
    with tempfile.TemporaryDirectory() as tmp:
        bundle, n_structures = scale_bundle(
            settings.scenario, Path(tmp) / "bundle", settings.decoders
        )
        nnunet = (
            write_model(settings.scenario, Path(tmp) / "nnunet")
            if set(settings.approaches) & set(NNUNET_APPROACHES)
            else None
        )
        ct = synthetic_ct(Path(tmp) / "ct.nii", settings.shape, settings.spacing_mm)
        figures: dict[str, Any] = {
            "setup": f"{settings.scenario}: {n_structures} structures, {settings.decoders} "
            f"decoders; CT "
            f"{'x'.join(map(str, settings.shape))} at {settings.spacing_mm} mm",
        }
        for approach in settings.approaches:
            model = nnunet if nnunet and approach in NNUNET_APPROACHES else bundle
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
    if settings.decoders not in DECODERS:
        raise ValueError(f"decoders {settings.decoders!r}: expected one of {', '.join(DECODERS)}")
    bad = sorted(set(settings.approaches) - set(APPROACHES))
    if bad:
        raise ValueError(f"approaches {bad}: expected some of {', '.join(APPROACHES)}")
    if set(settings.approaches) & set(NNUNET_APPROACHES):
        require_nnunet()


def scale_bundle(scenario: str, folder: Path, decoders: str = "teacher") -> tuple[Path, int]:
    """A bundle of the scenario plan's network and tasks, random weights; its structures.

    ``decoders``: ``teacher`` (full width, what the search starts from) or ``trimmed``
    (:func:`stand_in_student` within each task's size budget: what registration keeps).
    """
    from core.phases import PHASES
    from simulations.scenario import load_scenario

    plan = load_scenario(scenario).plan
    widths = plan.encoder.widths
    model = ContinualSegmenter(Encoder(plan.encoder))
    for task in plan.tasks:
        share = task.of(PHASES["search"]).size_budget
        genotype = (
            Genotype.teacher(len(widths) - 1)
            if decoders == "teacher"
            else stand_in_student(widths, len(task.structures), share)
        )
        model.add_decoder(task.name, Decoder(widths, genotype, task.structures))
    save_bundle(Bundle(model.eval(), plan.preprocessing, plan.patch), folder)
    return folder, len({s for t in plan.tasks for s in t.structures})


def stand_in_student(widths: tuple[int, ...], structures: int, share: float) -> Genotype:
    """The uniform genotype of the search's choices with the most parameters within budget.

    A stand-in for what the search finds (it may mix operations and widths by stage); the
    smallest of them where none fits.
    """
    depth = len(widths) - 1
    candidates = [Genotype.uniform(op, w, depth) for op in OPS for w in WIDTH_CHOICES]
    size = {g: genotype_parameters(widths, g, structures) for g in candidates}
    budget = budget_parameters(widths, structures, share)
    fitting = [g for g in candidates if size[g] <= budget]
    return max(fitting, key=size.__getitem__) if fitting else min(candidates, key=size.__getitem__)


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
        "import json, sys; from simulations.benchmarks.hospital_scale import measure_prediction; "
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

    ``streamed`` is :func:`core.inference.predict_volume` (``csfl predict``, precision
    ``auto``), ``streamed_fp32`` the same in fp32 (``--precision fp32``); ``plain`` runs MONAI's
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
    if approach in STREAMED:
        predict_volume(bundle, ct, progress=True, precision=STREAMED[approach])
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
