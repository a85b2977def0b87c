"""Prediction of a CT: preprocess, sliding windows (encoder once, every decoder), merge, restore.

Only the patient's box runs through the network, and the windows' outputs stream along
z (``core.streaming``) into each decoder's compact vote (arg-max, its probability,
confidence and anomaly), so memory does not grow with the number of structures. The
votes are merged by the bundle's rule (``core.merge``), slab by slab; each decoder with a
domain also scores every voxel by how far the CT lies from what its sites trained on
(``core.domain``), and the merge silences it outside its domain. The label map is
resampled back (nearest neighbour, slab by slab) onto the input's exact grid: same shape,
same affine, same orientation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch
from numpy.typing import NDArray
from tqdm import tqdm

from core.bundle import Bundle
from core.data.nifti import (
    NIFTI_ENDINGS,
    Header,
    memory_named,
    read_header,
    strip_nifti_ending,
    write_volume,
)
from core.data.transforms import IMAGE, Preprocessing, prepare_image
from core.device import DEFAULT_PRECISION, autocast
from core.domain import descriptors, domain_scale, domain_scores
from core.label_files import write_label_tables
from core.merge import (
    Calibration,
    DecoderVote,
    MergeSettings,
    label_dtype,
    output_structures,
)
from core.merge_rules import merge
from core.model import ContinualSegmenter, Decoder, DecoderOutput
from core.streaming import BODY_HU, Box, body_box, count_windows, stream_windows

log = logging.getLogger(__name__)
BODY_MARGIN_MM = 15.0  # context kept around the patient's box
MERGE_SLICES = 16  # slices merged at a time
RESTORE_VOXELS = 1 << 22  # input voxels resampled at a time


def combined_structures(model: ContinualSegmenter) -> list[str]:
    """The unified model's output structures (see ``core.merge.output_structures``)."""
    return output_structures([decoder.structures for _, decoder in model.items()])


@dataclass(frozen=True)
class VolumeOutputs:
    """Every decoder's vote over one preprocessed volume, and where that volume lies."""

    votes: list[DecoderVote]
    affine: NDArray[np.float64]  # of the preprocessed (RAS) grid
    original: Header  # the input's own grid


@torch.no_grad()
def volume_outputs(
    bundle: Bundle,
    image_path: str | Path,
    device: torch.device | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    progress: bool = False,
    foreground: bool = False,
    precision: str = DEFAULT_PRECISION,
) -> VolumeOutputs:
    """Run the network over a CT by sliding windows: the encoder once, every decoder.

    Only the patient's box runs through the network (air around it is background), and
    the windows' blended logits stream along z straight into each decoder's compact
    vote, so memory does not grow with the number of structures.

    Args:
        bundle: the unified model.
        image_path: the CT.
        device: where the network runs (default: where the bundle is).
        sw_batch_size: unused by the streamed windows (one window at a time); kept
            for callers.
        overlap: sliding-window overlap.
        progress: show a bar of windows done and time left.
        foreground: also keep each decoder's foreground probability (for maps).
        precision: of the network's convolutions (:func:`core.device.autocast`; ``auto``:
            bf16 where the device computes it, which moved no merged Dice of the
            ``default`` demo's test CTs by more than 0.005). A window whose outputs are
            not finite in bf16 runs again in fp32.

    Raises:
        DataError: if the input is not a readable 3D NIfTI of finite values, is too large
            at the model's spacing, or does not fit in memory (the file is named).
    """
    del sw_batch_size
    model = bundle.model.eval()
    device = device or next(model.parameters()).device
    original = read_header(image_path)
    item = prepare_image(bundle.preprocessing, original)
    image = item[IMAGE]
    affine = np.asarray(image.affine, dtype=np.float64)
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    shape = tuple(plain.shape[1:])
    slabs = volume_descriptors(bundle, plain[0])  # once for all decoders
    votes = [_initial_vote(bundle, task, slabs, foreground, shape) for task, _ in model.items()]
    box = _body(plain[0], bundle.preprocessing)
    if box is None:
        log.warning("%s: no body found (all air): every voxel is background", image_path)
        return VolumeOutputs(votes, affine, original)

    mixed = autocast(device, precision)
    bf16 = isinstance(mixed, torch.autocast)  # in fp32 there is nothing to check

    def all_heads(x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        # the encoder once, then one decoder at a time: only its outputs are alive
        with mixed:
            features = model.encoder(x.to(device))
        for task, decoder in model.items():
            with mixed:
                out = decoder(features)
            if bf16 and not _finite(out):
                out = decoder(model.encoder(x.to(device)))  # fp32: outside autocast
            yield f"{task}/organ", out.organ.float().cpu()
            yield f"{task}/anomaly", out.anomaly.float().cpu()
            yield f"{task}/confidence", out.confidence.float().cpu()

    def store(z0: int, z1: int, blended: dict[str, torch.Tensor]) -> None:
        lo, hi = max(z0, box[2].start), min(z1, box[2].stop)
        if lo >= hi:
            return
        at = (slice(None), slice(None), box[0], box[1], slice(lo, hi))
        blended = {k: v[..., lo - z0 : hi - z0] for k, v in blended.items()}
        for vote in votes:
            part = DecoderVote.from_logits(
                vote.task,
                vote.structures,
                blended[f"{vote.task}/organ"],
                blended[f"{vote.task}/anomaly"],
                blended[f"{vote.task}/confidence"],
                foreground=foreground,
            )
            for mine, theirs in _maps(vote, part):
                mine[at] = theirs

    total = count_windows(shape, bundle.roi_size, overlap, box)
    with tqdm(total=total, desc="windows", unit="window", disable=not progress) as bar:
        stream_windows(plain[None], bundle.roi_size, overlap, all_heads, store, bar, box)
    return VolumeOutputs(votes, affine, original)


def _finite(out: DecoderOutput) -> bool:
    """Whether a window's outputs are finite (the one-channel heads: they read everything)."""
    return bool(torch.isfinite(out.anomaly).all() and torch.isfinite(out.confidence).all())


def _initial_vote(
    bundle: Bundle, task: str, slabs: torch.Tensor, foreground: bool, shape: tuple[int, ...]
) -> DecoderVote:
    """A decoder's vote before any window: background, certain, nothing anomalous.

    Its domain scores (where it has a domain) cover every slice of the preprocessed volume
    (``slabs``: its :func:`core.domain.descriptors`).
    """
    decoder = bundle.model.decoder(task)
    structures = decoder.structures
    calibration = bundle.calibration.get(task, Calibration())
    full = (1, 1, *shape)
    return DecoderVote(
        task,
        structures,
        torch.zeros(full, dtype=label_dtype(len(structures))),
        torch.ones(full),
        torch.zeros(full),
        torch.ones(full),
        calibration.calibrated,
        skill=calibration.skills(structures),
        peers=calibration.peers,
        foreground=torch.zeros(full) if foreground else None,
        domain=domain_map(decoder, slabs),
        domain_scale=domain_scale(decoder.domain_thresholds) if decoder.has_domain else 1.0,
    )


def volume_descriptors(bundle: Bundle, image: torch.Tensor) -> torch.Tensor:
    """The :func:`core.domain.descriptors` of a preprocessed ``(X, Y, Z)`` volume."""
    spacing_z = bundle.preprocessing.spacing_mm[2]
    return descriptors(image, spacing_z, bundle.roi_size[2] * spacing_z)


def domain_map(decoder: Decoder, slabs: torch.Tensor) -> torch.Tensor | None:
    """``(1 + K, Z)``: a decoder's domain scores of a volume's slab descriptors.

    Row 0 scores its background, row ``k`` its structure ``k``; ``None`` for a decoder
    without a domain.
    """
    if not decoder.has_domain:
        return None
    return domain_scores(slabs, decoder.domain_centroids, decoder.domain_thresholds)


def _maps(a: DecoderVote, b: DecoderVote) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = [(a.label, b.label), (a.prob, b.prob), (a.anomaly, b.anomaly)]
    pairs.append((a.confidence, b.confidence))
    if a.foreground is not None and b.foreground is not None:
        pairs.append((a.foreground, b.foreground))
    return pairs


def _body(image: torch.Tensor, prep: Preprocessing) -> Box | None:
    """The patient's box in a preprocessed ``(X, Y, Z)`` volume (HU windowed to [0, 1])."""
    lo, hi = prep.hu_window
    level = float(np.clip((BODY_HU - lo) / (hi - lo), 0.0, 1.0))
    margin = int(np.ceil(BODY_MARGIN_MM / min(prep.spacing_mm)))
    return body_box(image.numpy() > level, margin)


def merge_volume(
    outputs: VolumeOutputs,
    structures: Sequence[str],
    settings: MergeSettings,
    calibration: dict[str, Calibration],
) -> torch.Tensor:
    """The merged label map ``(1, 1, ...)`` of a volume (each decoder within its domain).

    The merge runs slab by slab along z, so its per-decoder temporaries stay small.
    """
    votes = outputs.votes
    first = votes[0].label
    merged = torch.zeros(first.shape, dtype=torch.int64, device=first.device)
    for z in range(0, first.shape[-1], MERGE_SLICES):
        part = [v.part(z, z + MERGE_SLICES) for v in votes]
        merged[..., z : z + MERGE_SLICES] = merge(part, structures, settings)
    return merged


@dataclass(frozen=True)
class Prediction:
    """A label map on the input's grid and what its labels mean."""

    labels: NDArray[np.unsignedinteger]
    affine: NDArray[np.float64]
    structures: list[str]


def restore(
    label: torch.Tensor, affine: NDArray[np.float64], original: Header, n_structures: int
) -> NDArray[np.unsignedinteger]:
    """A ``(1, X, Y, Z)`` label map on the preprocessed grid, resampled onto the input's.

    Nearest neighbour, slab by slab of the input's last axis, so no full-resolution float
    map is ever held.
    """
    moving = MetaTensor(label.cpu().float(), affine=torch.as_tensor(affine))
    dtype = np.uint8 if n_structures < 256 else np.uint16
    out = np.zeros(original.shape, dtype=dtype)
    target_affine = np.asarray(original.affine, dtype=np.float64)
    depth = original.shape[2]
    step = max(1, RESTORE_VOXELS // (original.shape[0] * original.shape[1]))
    resample = ResampleToMatch(mode="nearest", padding_mode="zeros")
    for z in range(0, depth, step):
        n = min(step, depth - z)
        shift = np.eye(4)
        shift[2, 3] = z
        target = MetaTensor(
            torch.zeros((1, *original.shape[:2], n)),
            affine=torch.as_tensor(target_affine @ shift, dtype=torch.float64),
        )
        slab = resample(moving, target)
        out[..., z : z + n] = np.rint(np.asarray(slab[0].numpy())).astype(dtype)
    return out


def write_maps(folder: Path, stem: str, outputs: VolumeOutputs) -> list[Path]:
    """Each decoder's foreground probability, confidence and anomaly (float32 NIfTI).

    They lie on the preprocessed grid (RAS, the bundle's spacing), with its affine.

    Raises:
        ValueError: if the outputs kept no foreground probability.
    """
    written = []
    for vote in outputs.votes:
        if vote.foreground is None:
            raise ValueError("write_maps: predict with foreground=True to keep probabilities")
        maps = {
            "probability": vote.foreground,
            "confidence": vote.confidence,
            "anomaly": vote.anomaly,
        }
        for kind, values in maps.items():
            path = folder / f"{stem}_{vote.task}_{kind}.nii.gz"
            data = values[0, 0].cpu().numpy().astype(np.float32)
            written.append(write_volume(path, data, outputs.affine))
    return written


def predict_volume(
    bundle: Bundle,
    image_path: str | Path,
    device: torch.device | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    settings: MergeSettings | None = None,
    progress: bool = False,
    precision: str = DEFAULT_PRECISION,
) -> Prediction:
    """Segment every structure of every decoder in one CT, merged by the bundle's rule.

    Raises:
        DataError: if the input is not a readable 3D NIfTI (the file is named).
    """
    with memory_named(Path(image_path), "predict it"):
        outputs = volume_outputs(
            bundle, image_path, device, sw_batch_size, overlap, progress, precision=precision
        )
        structures = combined_structures(bundle.model)
        merged = merge_volume(outputs, structures, settings or bundle.merge, bundle.calibration)
        labels = restore(merged[0], outputs.affine, outputs.original, len(structures))
    return Prediction(labels, outputs.original.affine, structures)


def structure_sources(model: ContinualSegmenter) -> dict[str, list[str]]:
    """Per structure, the tasks (decoders) that predict it."""
    out: dict[str, list[str]] = {}
    for task, decoder in model.items():
        for s in decoder.structures:
            out.setdefault(s, []).append(task)
    return out


def predict_files(
    bundle: Bundle,
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    table_prefix: Path,
    device: torch.device | None = None,
    progress: bool = False,
    overlap: float = 0.25,
    settings: MergeSettings | None = None,
    maps: Path | None = None,
    precision: str = DEFAULT_PRECISION,
) -> list[Path]:
    """Predict each input into its output path and write the label tables once.

    Args:
        bundle: the unified model.
        inputs: CT files.
        outputs: a label-map path per input.
        table_prefix: where the label tables go (``.json`` and ``.txt`` are added).
        device: where the network runs (default: where the bundle is).
        progress: show a progress bar.
        overlap: sliding-window overlap.
        settings: the merge (default: the bundle's).
        maps: a folder for each decoder's probability, confidence and anomaly maps.
        precision: of the network (see :func:`volume_outputs`).

    Returns:
        Every file written.

    Raises:
        DataError: for an input that cannot be predicted (the file is named).
    """
    settings = settings or bundle.merge
    structures = combined_structures(bundle.model)
    tables = write_label_tables(
        table_prefix, structures, structure_sources(bundle.model), {"merge": settings.to_json()}
    )
    written = []
    for src, dst in tqdm(
        list(zip(inputs, outputs, strict=True)), desc="predict", unit="volume", disable=not progress
    ):
        with memory_named(src, "predict it"):
            out = volume_outputs(
                bundle,
                src,
                device,
                overlap=overlap,
                progress=progress,
                foreground=maps is not None,
                precision=precision,
            )
            merged = merge_volume(out, structures, settings, bundle.calibration)
            labels = restore(merged[0], out.affine, out.original, len(structures))
        written.append(write_volume(dst, labels, out.original.affine))
        if maps is not None:
            written += write_maps(maps, strip_nifti_ending(dst.name), out)
    return written + tables


def plan_outputs(input_path: Path, output: Path) -> tuple[list[Path], list[Path], Path]:
    """Inputs, their output files and the label-table prefix for a file or a folder.

    A file goes to ``output`` (a ``.nii.gz`` name), with its tables beside it; a folder's
    NIfTI files go into the ``output`` folder under their own names, with one set of
    tables named ``labels``.

    Raises:
        ValueError: for a folder without NIfTI files or a file output without a NIfTI name.
    """
    if input_path.is_dir():
        inputs = sorted(p for p in input_path.iterdir() if p.name.endswith(NIFTI_ENDINGS))
        if not inputs:
            raise ValueError(f"{input_path}: no .nii.gz or .nii files to predict")
        return inputs, [output / p.name for p in inputs], output / "labels"
    if not output.name.endswith(NIFTI_ENDINGS):
        raise ValueError(f"{output}: the output of one input must end in .nii.gz or .nii")
    return [input_path], [output], output.with_name(strip_nifti_ending(output.name))
