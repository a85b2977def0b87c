"""Per-structure validation of one task's decoder: Dice and HD95 on whole volumes.

Scores are kept as sums and counts per structure, so that sites can send aggregates (never
per-case values) and the server can pool them weighted by the number of cases.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_hausdorff_distance,
)
from monai.networks.utils import one_hot

from core.data import Case, LabelTable
from core.data.transforms import Preprocessing, validation_transforms
from core.model import ContinualSegmenter
from core.scores import ScoreSums


def _confusion(prediction: torch.Tensor, label: torch.Tensor, n: int) -> torch.Tensor:
    """``(1, n - 1, 4)``: true and false positives, true and false negatives per structure.

    As MONAI's ``get_confusion_matrix`` counts them, from one histogram of (predicted,
    true) label pairs: its one-hot input would be a volume per structure (33x slower on a
    256 x 256 x 200 map of 20 labels).
    """
    pairs = torch.bincount((prediction.long() * n + label.long()).flatten(), minlength=n * n)
    pairs = pairs.view(n, n)  # [predicted, true]
    tp = pairs.diagonal()
    fp, fn = pairs.sum(1) - tp, pairs.sum(0) - tp
    tn = pairs.sum() - tp - fp - fn
    return torch.stack([tp, fp, tn, fn], dim=-1)[None, 1:].float()


def score_prediction(
    prediction: torch.Tensor,
    label: torch.Tensor,
    structures: Sequence[str],
    spacing: Sequence[float],
    hd95: bool = True,
) -> ScoreSums:
    """Dice, precision, recall and HD95 of each structure for one case.

    Label maps are ``(1, 1, ...)`` indices. A structure absent from both scores NaN
    (skipped); absent from the ground truth but predicted, Dice 0. Precision is scored
    where the structure is predicted, recall where it is in the ground truth. With
    ``hd95`` off it is not computed (it costs a distance transform per structure).
    """
    n = len(structures) + 1
    matrix = _confusion(prediction, label, n)  # Dice is its F1 score
    rates = {
        metric: compute_confusion_matrix_metric(name, matrix)
        for metric, name in (("dice", "f1 score"), ("precision", "precision"), ("recall", "recall"))
    }
    sums = ScoreSums()
    for j, structure in enumerate(structures):
        for metric, values in rates.items():  # NaN (skipped) where undefined
            sums.add(metric, structure, float(values[0, j]))
    if hd95:
        present = (matrix[..., 0] + matrix[..., 1] + matrix[..., 3]) > 0  # tp + fp + fn
        pred, truth = one_hot(prediction, n), one_hot(label, n)
        with warnings.catch_warnings():  # MONAI warns about empty structures, which we skip
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(pred, truth, percentile=95, spacing=list(spacing))
        for j, structure in enumerate(structures):
            if bool(present[0, j]):
                sums.add("hd95", structure, float(hd[0, j]))
    return sums


def evaluate_task(
    model: ContinualSegmenter,
    task: str,
    cases: Sequence[Case],
    table: LabelTable,
    prep: Preprocessing,
    roi_size: Sequence[int],
    device: torch.device | None = None,
    scored: Sequence[str] | None = None,
) -> ScoreSums:
    """Scores per structure of a task's decoder over ``cases`` (:func:`score_prediction`).

    Each case is preprocessed whole, segmented by sliding windows of ``roi_size`` and
    compared with its label map in the preprocessed space. ``scored``: the structures
    scored (default: all the decoder's; the table must label them).
    """
    structures = model.decoder(task).structures

    def organ(x: torch.Tensor) -> torch.Tensor:
        return model.organ_logits(x, task)

    return evaluate_segmenter(
        model, organ, structures, cases, table, scored or structures, prep, roi_size, device
    )


@torch.no_grad()
def evaluate_segmenter(
    network: torch.nn.Module,
    organ: Callable[[torch.Tensor], torch.Tensor],
    classes: Sequence[str],
    cases: Sequence[Case],
    table: LabelTable,
    structures: Sequence[str],
    prep: Preprocessing,
    roi_size: Sequence[int],
    device: torch.device | None = None,
) -> ScoreSums:
    """Scores of ``structures`` over ``cases``, segmented by any network's organ logits.

    Args:
        network: the module ``organ`` runs (put in eval mode meanwhile).
        organ: patch ``(B, 1, ...)`` -> logits ``(B, 1 + len(classes), ...)``; channel 0
            is background, channel ``i`` is ``classes[i - 1]``.
        classes: what the network predicts, in channel order.
        cases: the cases, with label maps in ``table``'s ids.
        table: their label table (it must hold every structure scored).
        structures: the structures scored; a voxel predicted as another class counts as
            background.
        prep: preprocessing (the comparison is in the preprocessed space).
        roi_size: sliding-window size.
        device: where the network runs (default: where its parameters are).
    """
    device = device or next(network.parameters()).device
    lookup = torch.zeros(len(classes) + 1, dtype=torch.long)
    for j, structure in enumerate(structures, 1):
        if structure in classes:
            lookup[list(classes).index(structure) + 1] = j
    chain = validation_transforms(prep, table, structures)
    was_training = network.training
    network.eval()
    sums = ScoreSums()
    for case in cases:
        item = chain({"case": case})
        image = item["image"][None].to(device)
        logits = sliding_window_inference(image, roi_size, 1, organ, overlap=0.25)
        assert isinstance(logits, torch.Tensor)
        prediction = lookup[logits.argmax(1, keepdim=True).cpu()]
        label = item["label"][None].long()
        sums.merge(score_prediction(prediction, label, structures, prep.spacing_mm))
    network.train(was_training)
    return sums
