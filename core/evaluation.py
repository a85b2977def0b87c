"""Per-structure validation of one task's decoder on whole preprocessed volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from numpy.typing import NDArray

from core.data import Case, LabelTable
from core.data.transforms import Preprocessing, validation_transforms
from core.model import ContinualSegmenter

NDArrayFloat = NDArray[np.float64]


def dice_per_structure(
    prediction: torch.Tensor, label: torch.Tensor, n_structures: int
) -> NDArrayFloat:
    """Dice of each foreground class for label maps ``(B, 1, ...)``; NaN where both are empty.

    A structure absent from the ground truth but predicted scores 0; absent from both, NaN.
    """
    n = n_structures + 1
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    scores = metric(one_hot(prediction, n), one_hot(label, n))
    assert isinstance(scores, torch.Tensor)
    both_empty = (one_hot(prediction, n) + one_hot(label, n))[:, 1:].flatten(2).amax(2) == 0
    scores = torch.where(both_empty, torch.nan, scores)
    out: NDArrayFloat = scores.cpu().numpy().astype(np.float64)
    return out


@torch.no_grad()
def evaluate_task(
    model: ContinualSegmenter,
    task: str,
    cases: Sequence[Case],
    table: LabelTable,
    prep: Preprocessing,
    roi_size: Sequence[int],
    device: torch.device | None = None,
) -> dict[str, float | None]:
    """Mean Dice per structure of a task's decoder over ``cases`` (``None``: never present).

    Each case is preprocessed whole, segmented by sliding windows of ``roi_size`` and
    compared with its label map in the preprocessed space.
    """
    device = device or next(model.parameters()).device
    chain = validation_transforms(prep, table)
    was_training = model.training
    model.eval()
    per_case = []
    for case in cases:
        item = chain({"case": case})
        image = item["image"][None].to(device)
        logits = sliding_window_inference(
            image, roi_size, 1, lambda x: model.forward_task(x, task).organ, overlap=0.25
        )
        assert isinstance(logits, torch.Tensor)
        prediction = logits.argmax(1, keepdim=True).cpu()
        per_case.append(
            dice_per_structure(prediction, item["label"][None].long(), len(table.ids))[0]
        )
    model.train(was_training)
    scores = np.stack(per_case) if per_case else np.full((0, len(table.ids)), np.nan)
    out: dict[str, float | None] = {}
    for j, structure in enumerate(table.structures):
        column = scores[:, j]
        column = column[~np.isnan(column)]
        out[structure] = float(column.mean()) if column.size else None
    return out
