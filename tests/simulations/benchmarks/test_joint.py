import math

import pytest
import torch

from core.data.transforms import Augmentation
from core.local.training import LocalTrainSettings, merged_logits
from core.model import EncoderConfig
from simulations.benchmarks.baselines import StageLog
from simulations.benchmarks.joint import MarginalLoss, MixedBatches, joint
from simulations.evaluate import score_model
from simulations.task_data import TaskData
from tests.models import abdomen_cases, held_out_set, native_prep

SMALL = EncoderConfig((4, 8, 16))  # as in test_baselines: about a second a step
PATCH = (16, 16, 16)
ABDOMEN = ("liver", "spleen", "kidney_left", "kidney_right")
CHEST = ("heart", "lung_left", "lung_right")

# two voxels, background + three classes; the task labels only channel 2
LOGITS = [[1.0, 0.5, -0.5, 0.0], [0.2, -1.0, 2.0, 0.3]]
LABELS = [0, 1]  # voxel 0: background; voxel 1: the task's structure 1 (channel 2)


def _tensor(values):
    return torch.tensor(values).T.reshape(1, 4, 2, 1, 1)


def _softmax(row):
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def test_marginal_loss_matches_a_hand_computation():
    p = [_softmax(row) for row in LOGITS]
    # the classes the task does not label (1 and 3) count as its background
    marginal = [[q[0] + q[1] + q[3], q[2]] for q in p]
    ce = -(math.log(marginal[0][0]) + math.log(marginal[1][1])) / 2
    onehot = [[1, 0], [0, 1]]
    smooth = 1e-5  # MONAI's default smooth_nr and smooth_dr
    dice = []
    for c in range(2):  # batch Dice over both voxels, background included
        inter = sum(marginal[v][c] * onehot[v][c] for v in range(2))
        total = sum(marginal[v][c] + onehot[v][c] for v in range(2))
        dice.append((2 * inter + smooth) / (total + smooth))
    expected = (1 - sum(dice) / 2) + ce

    logits = _tensor(LOGITS)
    label = torch.tensor(LABELS).reshape(1, 1, 2, 1, 1)
    loss = MarginalLoss([[1, 2, 3], [2]])
    assert loss(logits, label, task=1).item() == pytest.approx(expected, rel=1e-5)
    merged = merged_logits(logits, [2]).softmax(1)
    flat = [q for row in marginal for q in row]
    assert merged[0, :, :, 0, 0].T.flatten().tolist() == pytest.approx(flat, rel=1e-6)


def test_a_task_that_labels_every_class_gets_the_plain_dice_ce():
    from monai.losses import DiceCELoss

    logits = _tensor(LOGITS)
    label = torch.tensor([0, 3]).reshape(1, 1, 2, 1, 1)
    plain = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, label)
    full = MarginalLoss([[1, 2, 3]])(logits, label, task=0)
    torch.testing.assert_close(full, plain)
    # a task labelling channels out of order reads its labels in its own order
    reordered = MarginalLoss([[3, 1, 2]])(logits, torch.tensor([0, 1]).reshape(1, 1, 2, 1, 1), 0)
    torch.testing.assert_close(reordered, plain)


@pytest.fixture(scope="module")
def tasks(tiny_sites):
    a, c = tiny_sites["hospA"].dataset, tiny_sites["hospC"].dataset
    test = {k: held_out_set(d) for k, d in (("a", a), ("c", c))}
    abdomen = TaskData(
        "abdomen",
        ABDOMEN,
        a.labels,
        abdomen_cases(tiny_sites),
        list(test["a"].cases),
        test["a"].labels,
    )
    chest = TaskData(
        "chest", CHEST, c.labels, list(c.cases), list(test["c"].cases), test["c"].labels
    )
    return abdomen, chest, native_prep(a)


@pytest.mark.slow  # caches both tasks' volumes and trains 2 steps
def test_the_joint_model_trains_on_every_task_and_is_scored_on_each(tasks):
    abdomen, chest, prep = tasks
    settings = LocalTrainSettings(
        steps=2, augmentation=Augmentation(patch_size=PATCH), progress=False
    )
    mixed = MixedBatches([abdomen, chest], prep, settings)
    drawn = []
    for _ in range(12):
        batch = next(mixed)
        drawn.append(mixed.task)
        assert int(batch["label"].max()) <= len((ABDOMEN, CHEST)[mixed.task])
    assert set(drawn) == {0, 1}  # both tasks' cases are in the pool

    log: list[StageLog] = []
    model = joint([abdomen, chest], SMALL, prep, settings, log=log)
    assert model.classes == (*ABDOMEN, *CHEST)  # the union, each structure once
    assert len(log[0].losses) == 2 and all(math.isfinite(x) for x in log[0].losses)
    for task in (abdomen, chest):
        dice = score_model(model, task, prep, (32, 32, 32)).means("dice")
        assert set(dice) == set(task.structures)
        assert all(v is None or 0.0 <= v <= 1.0 for v in dice.values())


def test_joint_refuses_a_task_without_training_cases(tasks):
    abdomen, chest, prep = tasks
    empty = TaskData("chest", CHEST, chest.table, [], chest.test_cases, chest.test_table)
    with pytest.raises(ValueError, match="training cases"):
        joint([abdomen, empty], SMALL, prep, LocalTrainSettings(steps=1))
