"""Prediction of a CT: preprocess, sliding windows (encoder once, every decoder), merge, restore.

The decoders' outputs over the whole volume are merged by the bundle's rule
(``core.merge``). With body-part gating, the volume is first placed on the body-part
scale by the decoders' own landmarks (:func:`place_volume`), then each decoder is
silenced outside its recorded range. The label map is resampled back (nearest
neighbour) onto the input's exact grid: same shape, same affine, same orientation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import ResampleToMatch
from numpy.typing import NDArray
from tqdm import tqdm

from core.bodypart import BodyRange, Landmark, landmarks, place, slice_heights
from core.bundle import Bundle
from core.data.nifti import (
    NIFTI_ENDINGS,
    Header,
    memory_named,
    read_header,
    strip_nifti_ending,
    write_volume,
)
from core.data.transforms import IMAGE, prepare_image
from core.label_files import write_label_tables
from core.merge import Calibration, DecoderVote, MergeSettings, merge, output_structures
from core.model import ContinualSegmenter

log = logging.getLogger(__name__)


def combined_structures(model: ContinualSegmenter) -> list[str]:
    """The unified model's output structures (see ``core.merge.output_structures``)."""
    return output_structures([decoder.structures for _, decoder in model.items()])


@dataclass(frozen=True)
class VolumeOutputs:
    """Every decoder's outputs over one preprocessed volume, and where that volume lies."""

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
) -> VolumeOutputs:
    """Run the network over a CT by sliding windows: the encoder once, every decoder.

    Raises:
        DataError: if the input is not a readable 3D NIfTI of finite values, is too large
            at the model's spacing, or does not fit in memory (the file is named).
    """
    model = bundle.model.eval()
    device = device or next(model.parameters()).device
    original = read_header(image_path)
    item = prepare_image(bundle.preprocessing, original)
    image = item[IMAGE][None].to(device)

    def all_heads(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for task, o in model(x).items():
            out |= {f"{task}/organ": o.organ, f"{task}/anomaly": o.anomaly}
            out[f"{task}/confidence"] = o.confidence
        return out

    outs = sliding_window_inference(image, bundle.roi_size, sw_batch_size, all_heads, overlap)
    assert isinstance(outs, dict)

    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.as_tensor() if isinstance(t, MetaTensor) else t

    votes = []
    for task, decoder in model.items():
        calibration = bundle.calibration.get(task, Calibration())
        votes.append(
            DecoderVote(
                task,
                decoder.structures,
                plain(outs[f"{task}/organ"]),
                plain(outs[f"{task}/anomaly"]),
                plain(outs[f"{task}/confidence"]),
                calibration.calibrated,
                skill=calibration.skills(decoder.structures),
            )
        )
    return VolumeOutputs(votes, np.asarray(item[IMAGE].affine, dtype=np.float64), original)


def place_volume(
    votes: Sequence[DecoderVote],
    affine: NDArray[np.float64],
    ranges: dict[str, BodyRange],
    margin: float,
) -> NDArray[np.float64] | None:
    """Body-part heights of a volume's slices, from every decoder's own landmarks.

    Each decoder's landmarks weigh their voxel count times its skill on them. A structure
    is one piece of evidence however many decoders find it: only its heaviest landmark
    votes, so decoders that share structures (an overlap, or the same false positive)
    do not outvote a structure only one decoder knows. A second
    pass keeps only the landmarks each decoder found inside its own range (as the first
    placement puts them), so one decoder's false positives far outside the anatomy it
    was trained on do not steer the placement.
    """
    heights = slice_heights(affine, votes[0].organ.shape[2:])
    heaviest: dict[str, tuple[str, Landmark]] = {}
    for vote in votes:
        arg = vote.organ[0].argmax(0).cpu().numpy()
        for f in landmarks(arg, vote.structures, affine, vote.skill):
            if f.structure not in heaviest or f.weight > heaviest[f.structure][1].weight:
                heaviest[f.structure] = (vote.task, f)
    found = list(heaviest.values())
    placed = place([f for _, f in found], heights)
    if placed is None:
        return None
    inside = []
    for task, f in found:
        r, at = ranges.get(task), float(np.interp(f.here, heights, placed))
        if r is None or r.lo - margin <= at <= r.hi + margin:
            inside.append(f)
    return place(inside, heights) if inside else placed


def merge_volume(
    outputs: VolumeOutputs,
    structures: Sequence[str],
    settings: MergeSettings,
    calibration: dict[str, Calibration],
) -> torch.Tensor:
    """The merged label map ``(1, 1, ...)`` of a volume, gated by body part if asked."""
    votes = outputs.votes
    ranges = {t: c.body_range for t, c in calibration.items() if c.body_range is not None}
    if settings.rule == "confidence" and settings.gating and ranges:
        placed = place_volume(votes, outputs.affine, ranges, settings.gate_margin_mm)
        if placed is None:
            log.warning("no landmark found: the volume is not placed, decoders are not gated")
        else:
            scale = torch.as_tensor(placed, device=votes[0].organ.device)
            m = settings.gate_margin_mm
            votes = [
                dataclasses.replace(
                    v, gate=((scale >= r.lo - m) & (scale <= r.hi + m)).view(1, 1, 1, 1, -1)
                )
                if (r := ranges.get(v.task)) is not None
                else v
                for v in votes
            ]
    return merge(votes, structures, settings)


@dataclass(frozen=True)
class Prediction:
    """A label map on the input's grid and what its labels mean."""

    labels: NDArray[np.unsignedinteger]
    affine: NDArray[np.float64]
    structures: list[str]


def restore(
    label: torch.Tensor, affine: NDArray[np.float64], original: Header, n_structures: int
) -> NDArray[np.unsignedinteger]:
    """A ``(1, X, Y, Z)`` label map on the preprocessed grid, resampled onto the input's."""
    moving = MetaTensor(label.cpu().float(), affine=torch.as_tensor(affine))
    target = MetaTensor(
        torch.zeros((1, *original.shape)),
        affine=torch.as_tensor(original.affine, dtype=torch.float64),
    )
    restored = ResampleToMatch(mode="nearest", padding_mode="zeros")(moving, target)
    dtype = np.uint8 if n_structures < 256 else np.uint16
    out: NDArray[np.unsignedinteger] = np.rint(np.asarray(restored[0].numpy())).astype(dtype)
    return out


def write_maps(folder: Path, stem: str, outputs: VolumeOutputs) -> list[Path]:
    """Each decoder's foreground probability, confidence and anomaly (float32 NIfTI).

    They lie on the preprocessed grid (RAS, the bundle's spacing), with its affine.
    """
    written = []
    for vote in outputs.votes:
        maps = {
            "probability": 1.0 - torch.softmax(vote.organ.float(), dim=1)[:, 0],
            "confidence": torch.sigmoid(vote.confidence.float())[:, 0],
            "anomaly": torch.sigmoid(vote.anomaly.float())[:, 0],
        }
        for kind, values in maps.items():
            path = folder / f"{stem}_{vote.task}_{kind}.nii.gz"
            data = values[0].cpu().numpy().astype(np.float32)
            written.append(write_volume(path, data, outputs.affine))
    return written


def predict_volume(
    bundle: Bundle,
    image_path: str | Path,
    device: torch.device | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    settings: MergeSettings | None = None,
) -> Prediction:
    """Segment every structure of every decoder in one CT, merged by the bundle's rule.

    Raises:
        DataError: if the input is not a readable 3D NIfTI (the file is named).
    """
    with memory_named(Path(image_path), "predict it"):
        outputs = volume_outputs(bundle, image_path, device, sw_batch_size, overlap)
        structures = combined_structures(bundle.model)
        merged = merge_volume(outputs, structures, settings or bundle.merge, bundle.calibration)
        labels = restore(merged[0], outputs.affine, outputs.original, len(structures))
    return Prediction(labels, outputs.original.affine, structures)


def _sources(model: ContinualSegmenter) -> dict[str, list[str]]:
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

    Returns:
        Every file written.

    Raises:
        DataError: for an input that cannot be predicted (the file is named).
    """
    settings = settings or bundle.merge
    structures = combined_structures(bundle.model)
    tables = write_label_tables(
        table_prefix, structures, _sources(bundle.model), {"merge": settings.to_json()}
    )
    written = []
    for src, dst in tqdm(
        list(zip(inputs, outputs, strict=True)), desc="predict", unit="volume", disable=not progress
    ):
        with memory_named(src, "predict it"):
            out = volume_outputs(bundle, src, device, overlap=overlap)
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
