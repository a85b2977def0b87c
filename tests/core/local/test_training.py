import math

import numpy as np
import pytest
import torch

from core.data.transforms import Augmentation
from core.device import native_bf16
from core.local.training import (
    LocalTrainSettings,
    NonFiniteError,
    SegmentationLoss,
    optimise,
    train_phase,
)
from core.model import Decoder, Genotype
from tests.builders import nnunet_dataset
from tests.models import PATCH, TINY, TRAINED_STEPS, native_prep, tiny_model


def _settings(steps, patch=PATCH, **kw):
    return LocalTrainSettings(
        steps=steps, augmentation=Augmentation(patch_size=patch), progress=False, **kw
    )


def test_base_phase_learns_the_phantom_organs(trained_run, tiny_sites):
    result = trained_run.result  # 200 steps on both abdominal sites, scored on held-out cases
    assert np.mean(result.losses[-20:]) < 0.6 * np.mean(result.losses[:20])
    dice = {k: v for k, v in result.dice.items() if v is not None}
    assert set(dice) == set(tiny_sites["hospA"].dataset.labels.structures)
    # A model that learned nothing predicts background everywhere: Dice 0 for every organ.
    assert dice["liver"] > 0.7
    assert np.mean(list(dice.values())) > 0.4
    assert result.metrics()["steps"] == TRAINED_STEPS and result.seconds_per_step > 0


def test_a_new_decoder_never_changes_old_outputs(tmp_path):
    first = nnunet_dataset(tmp_path / "A", n_cases=2, structures=("liver", "spleen"))
    second = nnunet_dataset(tmp_path / "B", n_cases=2, structures=("kidney_left",))
    prep = native_prep(first)
    model = tiny_model(first.labels.structures)
    patch = (16, 16, 16)
    train_phase(
        model,
        "abdomen",
        first.labels,
        first.cases,
        [],
        prep,
        _settings(2, patch),
        train_encoder=True,
    )
    model.encoder.freeze()
    probe = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        before = model(probe)["abdomen"]
    encoder_hash = model.encoder.weights_sha256()

    new = model.add_decoder(
        "kidneys", Decoder(TINY.widths, Genotype.teacher(3), second.labels.structures)
    )
    untrained = {k: v.clone() for k, v in new.state_dict().items()}
    train_phase(
        model,
        "kidneys",
        second.labels,
        second.cases,
        [],
        prep,
        _settings(3, patch),
        train_encoder=False,
    )
    model.eval()
    with torch.no_grad():
        after = model(probe)
    assert torch.equal(before.organ, after["abdomen"].organ)
    assert torch.equal(before.anomaly, after["abdomen"].anomaly)
    assert torch.equal(before.confidence, after["abdomen"].confidence)
    assert model.encoder.weights_sha256() == encoder_hash
    trained = new.state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in trained)  # it did learn


def test_phases_refuse_what_does_not_fit(tmp_path):
    ds = nnunet_dataset(tmp_path / "A", n_cases=1, structures=("liver", "spleen"))
    prep = native_prep(ds)
    model = tiny_model(ds.labels.structures)
    with pytest.raises(ValueError, match="freeze the encoder"):
        train_phase(
            model, "abdomen", ds.labels, ds.cases, [], prep, _settings(1), train_encoder=False
        )
    with pytest.raises(ValueError, match="multiples of 8"):
        train_phase(
            model, "abdomen", ds.labels, ds.cases, [], prep, _settings(1, (12, 16, 16)), True
        )
    with pytest.raises(ValueError, match="no training cases"):
        train_phase(model, "abdomen", ds.labels, [], [], prep, _settings(1, (16,) * 3), True)
    other = nnunet_dataset(tmp_path / "B", n_cases=1, structures=("liver",))
    with pytest.raises(ValueError, match="does not label"):
        train_phase(
            model, "abdomen", other.labels, other.cases, [], prep, _settings(1), train_encoder=True
        )
    model.encoder.freeze()
    with pytest.raises(ValueError, match="already frozen"):
        train_phase(
            model, "abdomen", ds.labels, ds.cases, [], prep, _settings(1), train_encoder=True
        )


def test_fedprox_keeps_local_training_near_the_round_model(tmp_path):
    data = nnunet_dataset(tmp_path / "A", n_cases=2, structures=("liver", "spleen"))
    prep = native_prep(data)
    drift = {}
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = tiny_model(data.labels.structures)
        start = [p.detach().clone() for p in model.parameters()]
        settings = _settings(6, (16, 16, 16))
        train_phase(model, "abdomen", data.labels, data.cases, [], prep, settings, True, mu)
        pairs = zip(model.parameters(), start, strict=True)
        drift[mu] = float(sum((p.detach() - p0).square().sum() for p, p0 in pairs))
    assert 0 < drift[10.0] < 0.9 * drift[0.0], drift


NATIVE_BF16 = native_bf16(torch.device("cpu"))


@pytest.mark.parametrize(
    "precision",
    [
        "fp32",
        "auto",
        pytest.param(
            "bf16",
            marks=pytest.mark.skipif(not NATIVE_BF16, reason="bf16 is emulated on this CPU (slow)"),
        ),
    ],
)
def test_every_precision_trains_and_the_weights_stay_fp32(tmp_path, precision):
    data = nnunet_dataset(tmp_path / "A", n_cases=1, structures=("liver", "spleen"))
    model = tiny_model(data.labels.structures)
    settings = _settings(2, (16, 16, 16), precision=precision)
    result = train_phase(
        model, "abdomen", data.labels, data.cases, [], native_prep(data), settings, True
    )
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_partially_labelled_dataset_trains_its_structures_marginally(tmp_path):
    liver_only = nnunet_dataset(tmp_path / "A", n_cases=2, structures=("liver",))
    prep = native_prep(liver_only)
    model = tiny_model(("liver", "spleen"))
    settings = _settings(2, (16, 16, 16))
    args = ("abdomen", liver_only.labels, liver_only.cases[:1], liver_only.cases[1:], prep)
    with pytest.raises(ValueError, match=r"does not label \['spleen'\]"):
        train_phase(model, *args, settings, True)
    result = train_phase(model, *args, settings, True, partial=True)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert set(result.scores.dice) == {"liver"}  # only what the site labels is validated
    nothing = nnunet_dataset(tmp_path / "B", n_cases=1, structures=("heart",))
    with pytest.raises(ValueError, match="does not label"):
        train_phase(
            model, "abdomen", nothing.labels, nothing.cases, [], prep, settings, True, partial=True
        )


def test_the_loss_is_computed_in_fp32_under_bf16_autocast():
    logits = torch.randn(2, 3, 8, 8, 8).bfloat16()
    label = torch.randint(0, 3, (2, 1, 8, 8, 8))
    loss = SegmentationLoss()
    expected = loss(logits.float(), label)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would leave the softmax in bf16
        got = loss(logits, label)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def _stream(*scales):
    return iter({"image": torch.full((3,), s), "label": torch.zeros(1)} for s in scales)


@pytest.mark.parametrize(
    ("loss_of", "scales", "what", "step"),
    [
        (lambda p, image: (p * image).sum(), (1.0, math.inf, 1.0), "loss", 2),
        (lambda p, image: torch.sqrt(p - image).sum(), (1.0, 1.0), "gradients", 1),
    ],
)
def test_a_phase_stops_at_its_first_non_finite_step_before_the_weights_take_it(
    loss_of, scales, what, step
):
    p = torch.nn.Parameter(torch.ones(3))
    settings = LocalTrainSettings(steps=len(scales), progress=False, precision="fp32")
    with pytest.raises(NonFiniteError, match=f"test: the {what} turned non-finite at step {step}"):
        optimise([p], settings, _stream(*scales), lambda x, _: loss_of(p, x), p.device, "test")
    assert torch.isfinite(p).all()
