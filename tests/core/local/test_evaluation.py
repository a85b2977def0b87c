import numpy as np
import pytest
import torch

from core.local.evaluation import score_prediction
from core.scores import ScoreSums

STRUCTURES = ("liver", "spleen", "heart")


def _maps(seed):
    g = torch.Generator().manual_seed(seed)
    prediction = torch.randint(0, 3, (1, 1, 9, 8, 7), generator=g)  # never heart
    label = torch.randint(0, 4, (1, 1, 9, 8, 7), generator=g)
    label[label == 2] = 0  # spleen only predicted: Dice 0
    return prediction, label


def test_dice_is_twice_the_overlap_over_the_sizes():
    prediction, label = _maps(0)
    scores = score_prediction(prediction, label, STRUCTURES, (1.0, 1.0, 2.0))
    for j, structure in enumerate(STRUCTURES, 1):
        pred, truth = (prediction == j).numpy(), (label == j).numpy()
        expected = 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())
        assert scores.means("dice")[structure] == pytest.approx(expected, abs=1e-6)
    assert scores.means("dice")["spleen"] == 0.0
    assert set(scores.means("hd95")) == {"liver"}  # defined where both maps hold it


def test_precision_where_predicted_and_recall_where_present():
    prediction, label = _maps(2)
    scores = score_prediction(prediction, label, STRUCTURES, (1.0, 1.0, 1.0), hd95=False)
    pred, truth = (prediction == 1).numpy(), (label == 1).numpy()
    hit = np.logical_and(pred, truth).sum()
    assert scores.means("precision")["liver"] == pytest.approx(hit / pred.sum(), abs=1e-6)
    assert scores.means("recall")["liver"] == pytest.approx(hit / truth.sum(), abs=1e-6)
    # spleen: predicted, never present (precision 0, no recall); heart: present, never
    # predicted (recall 0, no precision)
    assert scores.means("precision")["spleen"] == 0.0 and "spleen" not in scores.recall
    assert scores.means("recall")["heart"] == 0.0 and "heart" not in scores.precision
    assert ScoreSums.from_flat(scores.to_flat()) == scores  # the wire keeps them


def test_hd95_can_be_left_out_and_dice_does_not_change():
    prediction, label = _maps(1)
    both = score_prediction(prediction, label, STRUCTURES, (1.0, 1.0, 1.0))
    dice_only = score_prediction(prediction, label, STRUCTURES, (1.0, 1.0, 1.0), hd95=False)
    assert dice_only.dice == both.dice and dice_only.hd95 == {} and both.hd95


def test_a_structure_absent_from_both_maps_is_not_scored():
    empty = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label = empty.clone()
    label[0, 0, 0, 0, 0] = 1
    scores = score_prediction(empty, label, STRUCTURES, (1.0, 1.0, 1.0))
    assert scores.means("dice") == {"liver": 0.0}
    pooled = ScoreSums().merge(scores).merge(score_prediction(label, label, STRUCTURES, (1, 1, 1)))
    assert pooled.means("dice") == {"liver": 0.5}
