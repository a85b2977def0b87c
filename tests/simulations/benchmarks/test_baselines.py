import dataclasses
import math

import pytest
import torch

from core.anatomy import UnknownStructureError
from core.data.transforms import Augmentation
from core.local.training import LocalTrainSettings, patch_batches
from core.model import Decoder, Encoder, EncoderConfig, Genotype
from simulations.benchmarks.baselines import (
    GrowingSegmenter,
    StageLoss,
    lwf_kd,
    mib_ce,
    mib_kd,
    sequential,
    upper_bound,
)
from simulations.evaluate import score_model
from simulations.task_data import TaskData
from tests.models import abdomen_cases, held_out_set, native_prep

# Smaller than the suite's TINY model: a training step here costs about a second on 2 cores.
SMALL = EncoderConfig((4, 8, 16))
PATCH = (16, 16, 16)
ABDOMEN = ("liver", "spleen", "kidney_left", "kidney_right")
CHEST = ("heart", "lung_left", "lung_right")


def _settings(steps, **kw):
    return LocalTrainSettings(
        steps=steps, augmentation=Augmentation(patch_size=PATCH), progress=False, **kw
    )


@pytest.fixture(scope="module")
def tasks(tiny_sites):
    a, c = tiny_sites["hospA"].dataset, tiny_sites["hospC"].dataset
    ta, tc = held_out_set(a), held_out_set(c)
    abdomen = TaskData(
        "abdomen", ABDOMEN, a.labels, abdomen_cases(tiny_sites), list(ta.cases), ta.labels
    )
    chest = TaskData("chest", CHEST, c.labels, list(c.cases), list(tc.cases), tc.labels)
    return abdomen, chest, native_prep(a)


@pytest.fixture(scope="module")
def chest_batch(tasks):
    _, chest, prep = tasks
    batch = next(patch_batches(chest.train_cases, chest.table, CHEST, prep, _settings(1)))
    return batch["image"], batch["label"]


def _probe(seed=0):
    return torch.randn(2, 1, *PATCH, generator=torch.Generator().manual_seed(seed))


def _features(model, x):
    """The decoder's last features, just before the organ head."""
    captured = []
    handle = model.organ_head.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    model(x)
    handle.remove()
    return captured[0]


def test_the_growing_model_is_the_teacher_decoder_path():
    torch.manual_seed(3)
    model = GrowingSegmenter(SMALL, ABDOMEN)
    torch.manual_seed(3)
    encoder = Encoder(SMALL)
    decoder = Decoder(SMALL.widths, Genotype.teacher(2), ABDOMEN)
    x = _probe()
    with torch.no_grad():
        assert torch.equal(model(x), decoder(encoder(x)).organ)


@torch.no_grad()
def test_growing_keeps_old_channels_and_known_structures():
    torch.manual_seed(0)
    model = GrowingSegmenter(SMALL, ABDOMEN)
    x = _probe()
    features = _features(model, x)
    before = model.organ_head(features)
    old_weight = model.organ_head.weight.clone()

    assert model.grow(("liver", "kidney_left")) == ()  # known structures: no new channel
    assert model.organ_head.out_channels == 5 and model.classes == ABDOMEN

    added = model.grow(("heart", "liver", "lung_left"))
    assert added == ("heart", "lung_left")
    assert model.classes == (*ABDOMEN, "heart", "lung_left")
    assert model.organ_head.out_channels == 7
    after = model.organ_head(features)
    assert after.shape[1] == 7
    assert torch.equal(after[:, :5], before)
    assert torch.equal(model.organ_head.weight[:5], old_weight)
    assert model.organ_head.weight[5:].abs().sum() > 0  # new channels are initialised
    assert torch.equal(model(x)[:, :5], before)  # the rest of the network is untouched
    with pytest.raises(UnknownStructureError, match="not_an_organ"):
        model.grow(("not_an_organ",))


@torch.no_grad()
def test_mib_init_gives_old_background_to_background_plus_new():
    torch.manual_seed(1)
    model = GrowingSegmenter(SMALL, ("liver", "spleen"))
    model.organ_head.bias.copy_(torch.tensor([0.3, -0.2, 0.5]))  # non-trivial biases
    old = GrowingSegmenter(SMALL, ("liver", "spleen"))
    old.load_state_dict(model.state_dict())
    x = _probe(1)

    assert model.grow(("spleen", *CHEST), mib_init=True) == CHEST
    head = model.organ_head
    assert torch.equal(head.weight[3:], head.weight[:1].expand(3, -1, -1, -1, -1))
    shift = math.log(len(CHEST) + 1)
    assert torch.allclose(head.bias[3:], torch.full((3,), 0.3 - shift))
    assert head.bias[0].item() == pytest.approx(0.3 - shift)

    p_new, p_old = model(x).softmax(1), old(x).softmax(1)
    torch.testing.assert_close(p_new[:, 0] + p_new[:, 3:].sum(1), p_old[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(p_new[:, 1:3], p_old[:, 1:3], atol=1e-6, rtol=0)
    # Every new class starts with an equal share of the old background.
    torch.testing.assert_close(p_new[:, 3], p_old[:, 0] / 4, atol=1e-6, rtol=1e-5)
    assert mib_kd(model(x), old(x)) < 1e-6  # at temperature 1, as in the paper
    assert mib_kd(model(x), old(x), 2.0) > 1e-3  # (not at other temperatures)


def test_mib_ce_is_the_unbiased_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 3, 3, generator=g)
    label = torch.tensor([0, 3, 4])[torch.randint(0, 3, (2, 1, 3, 3, 3), generator=g)]
    p = logits.softmax(1)
    # Background in the new data: channel 0 and the old classes 1, 2.
    p_label = torch.where(label[:, 0] == 0, p[:, :3].sum(1), p.gather(1, label)[:, 0])
    expected = -p_label.log().mean()
    torch.testing.assert_close(mib_ce(logits, label, [0, 1, 2]), expected)
    # With nothing merged it is the plain cross-entropy.
    plain = torch.nn.functional.cross_entropy(logits, label[:, 0])
    torch.testing.assert_close(mib_ce(logits, label, [0]), plain)


@pytest.mark.parametrize("method", ["lwf", "mib"])
def test_kd_is_zero_at_stage_start_and_grows_after(method, chest_batch):
    image, label = chest_batch
    torch.manual_seed(0)
    model = GrowingSegmenter(SMALL, ABDOMEN)
    old = GrowingSegmenter(SMALL, ABDOMEN)
    old.load_state_dict(model.state_dict())
    old.eval().requires_grad_(False)
    with torch.no_grad():
        same = model(image)
    for kd in (lwf_kd, mib_kd):  # the same model: 0, to the rounding of its matrix products
        assert kd(same, old(image), 2.0).item() == pytest.approx(0.0, abs=1e-6)

    model.grow(CHEST, mib_init=method == "mib")
    current = [model.classes.index(s) + 1 for s in CHEST]
    loss = StageLoss(method, model, old, current, kd_weight=1.0, temperature=2.0)
    total = loss(image, label)
    assert torch.isfinite(total) and total > 0
    if method == "lwf":
        assert abs(loss.kd_values[0]) < 1e-6  # old channels are untouched by growing
    else:
        assert abs(loss.kd_values[0]) < 1e-6  # background + new = old background
    total.backward()
    assert model.organ_head.weight.grad is not None

    with torch.no_grad():
        model.organ_head.bias[1] += 1.0  # the model moves away from the old one
    loss(image, label)
    assert loss.kd_values[1] > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "lwf", "mib"])
def test_sequential_learns_the_union_of_two_tasks(method, tasks):
    abdomen, chest, prep = tasks
    seen = []
    log = []
    chest = dataclasses.replace(chest, steps=2)  # its own budget; abdomen keeps the settings'
    model = sequential(
        method,
        [abdomen, chest],
        SMALL,
        prep,
        _settings(1),
        on_stage=lambda i, m: seen.append((i, m.classes)),
        log=log,
    )
    assert seen == [(0, ABDOMEN), (1, (*ABDOMEN, *CHEST))]
    assert model.classes == (*ABDOMEN, *CHEST)
    with torch.no_grad():
        assert model(_probe()).shape == (2, 8, *PATCH)
    assert [entry.task for entry in log] == ["abdomen", "chest"]
    assert [len(entry.losses) for entry in log] == [1, 2]
    assert all(math.isfinite(x) for entry in log for x in entry.losses)
    first_kd = log[1].kd_losses[0]
    if method == "mib":
        assert abs(first_kd) < 1e-4  # MiB's init: ~0 up to rounding (bf16 where native)
    else:
        assert first_kd == 0.0  # lwf: old channels untouched; finetune: no KD at all
    assert log[0].kd_losses == []  # stage 0 is the plain first model: no KD term at all


def test_sequential_refuses_an_unknown_method_and_a_task_without_training_cases(tasks):
    abdomen, _, prep = tasks
    with pytest.raises(ValueError, match="unknown method"):
        sequential("replay", [abdomen], SMALL, prep, _settings(1))  # type: ignore[arg-type]
    empty = dataclasses.replace(abdomen, train_cases=[])
    with pytest.raises(ValueError, match="training cases"):
        sequential("lwf", [abdomen, empty], SMALL, prep, _settings(1))


@pytest.mark.slow
def test_upper_bound_trains_one_task_and_its_loss_falls(tasks):
    abdomen, _, prep = tasks
    log = []
    model = upper_bound(abdomen, SMALL, prep, _settings(6, lr=2e-2), log=log)
    assert model.classes == ABDOMEN  # one model of the task's structures alone
    losses = log[0].losses
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0]
    scores = score_model(model, abdomen, prep, (32, 32, 32))  # one window: fast
    assert set(scores.means("dice")) == set(ABDOMEN)
    assert all(0.0 <= v <= 1.0 for v in scores.means("dice").values())
