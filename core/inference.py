"""Prediction of a CT: preprocess, sliding windows (encoder once, every decoder), merge, restore.

Until the anomaly-aware confidence merge lands, overlapping decoders merge by the
``highest_probability`` rule: each decoder proposes its arg-max structure at a voxel with
that structure's softmax probability; the highest foreground proposal wins, and a voxel
that every decoder calls background stays background. The same structure from different
decoders is one output label. The label map is resampled back (nearest neighbour) onto the
input's exact grid: same shape, same affine, same orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, ResampleToMatch
from numpy.typing import NDArray
from tqdm import tqdm

from core.bundle import Bundle
from core.data import Case
from core.data.nifti import NIFTI_ENDINGS, read_header, strip_nifti_ending, write_volume
from core.data.transforms import IMAGE, preprocessing
from core.label_files import write_label_tables
from core.model import ContinualSegmenter


def combined_structures(model: ContinualSegmenter) -> list[str]:
    """One output label per structure, in order of first appearance over the decoders.

    Adding a task never renumbers the structures that earlier tasks brought.
    """
    out: list[str] = []
    for _, decoder in model.items():
        out += [s for s in decoder.structures if s not in out]
    return out


def merge_highest_probability(
    logits: dict[str, torch.Tensor], model: ContinualSegmenter, structures: Sequence[str]
) -> torch.Tensor:
    """Merge decoders' organ logits ``(B, 1 + K_t, ...)`` into one label map ``(B, 1, ...)``.

    Labels index ``structures`` from 1; see the module docstring for the rule.
    """
    best_score: torch.Tensor | None = None
    best_label: torch.Tensor | None = None
    for task, decoder in model.items():
        probs = torch.softmax(logits[task].float(), dim=1)
        score, arg = probs.max(dim=1, keepdim=True)
        to_output = torch.tensor(
            [0] + [structures.index(s) + 1 for s in decoder.structures], device=arg.device
        )
        label = to_output[arg]
        score = torch.where(arg > 0, score, torch.full_like(score, -1.0))
        if best_score is None or best_label is None:
            best_score, best_label = score, label
        else:
            wins = score > best_score
            best_score = torch.where(wins, score, best_score)
            best_label = torch.where(wins, label, best_label)
    assert best_label is not None, "the model has no decoder"
    return best_label


@dataclass(frozen=True)
class Prediction:
    """A label map on the input's grid and what its labels mean."""

    labels: NDArray[np.unsignedinteger]
    affine: NDArray[np.float64]
    structures: list[str]


@torch.no_grad()
def predict_volume(
    bundle: Bundle,
    image_path: str | Path,
    device: torch.device | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
) -> Prediction:
    """Segment every structure of every decoder in one CT.

    Raises:
        DataError: if the input is not a readable 3D NIfTI (the file is named).
    """
    model = bundle.model.eval()
    device = device or next(model.parameters()).device
    original = read_header(image_path)
    item = Compose(preprocessing(bundle.preprocessing, None))(
        {"case": Case("input", Path(image_path))}
    )
    image = item[IMAGE][None].to(device)

    def all_decoders(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: out.organ for task, out in model(x).items()}

    logits = sliding_window_inference(image, bundle.roi_size, sw_batch_size, all_decoders, overlap)
    assert isinstance(logits, dict)
    structures = combined_structures(model)
    merged = merge_highest_probability(logits, model, structures)[0].cpu().float()
    plain = merged.as_tensor() if isinstance(merged, MetaTensor) else merged
    label = MetaTensor(plain, affine=item[IMAGE].affine)
    target = MetaTensor(
        torch.zeros((1, *original.shape)),
        affine=torch.as_tensor(original.affine, dtype=torch.float64),
    )
    restored = ResampleToMatch(mode="nearest", padding_mode="zeros")(label, target)
    dtype = np.uint8 if len(structures) < 256 else np.uint16
    out = np.rint(np.asarray(restored[0].numpy())).astype(dtype)
    return Prediction(out, original.affine, structures)


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
) -> list[Path]:
    """Predict each input into its output path and write the label tables once."""
    structures = combined_structures(bundle.model)
    tables = write_label_tables(
        table_prefix, structures, _sources(bundle.model), {"merge": bundle.merge}
    )
    written = []
    for src, dst in tqdm(
        list(zip(inputs, outputs, strict=True)), desc="predict", unit="volume", disable=not progress
    ):
        prediction = predict_volume(bundle, src, device, overlap=overlap)
        written.append(write_volume(dst, prediction.labels, prediction.affine))
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
