import numpy as np
import torch

from core.bundle import load_bundle
from core.calibration import calibrate_phase, paste_anomalies
from core.data.transforms import Augmentation
from core.training import TrainSettings
from tests.models import PATCH, abdomen_cases, native_prep


def test_pasted_anomalies_stay_inside_one_structure():
    label = torch.zeros(3, 1, 16, 16, 16, dtype=torch.long)
    label[:, :, 2:10, 2:10, 2:10] = 1
    label[:, :, 10:14, 2:10, 2:10] = 2
    image = torch.full((3, 1, 16, 16, 16), 0.5)
    out, mask = paste_anomalies(image, label, torch.Generator().manual_seed(0), rate=1.0)
    for b in range(3):
        pasted = mask[b, 0] > 0
        assert pasted.any()
        assert len(torch.unique(label[b, 0][pasted])) == 1 and label[b, 0][pasted].min() > 0
        assert torch.equal(out[b, 0][~pasted], image[b, 0][~pasted])
        assert (out[b, 0][pasted] - 0.5).abs().mean() > 10 / 2000  # at least ~10 HU apart
    untouched, none = paste_anomalies(image, label, torch.Generator().manual_seed(0), rate=0.0)
    assert torch.equal(untouched, image) and not none.any()


def test_calibration_trains_the_heads_only_and_measures_the_range(trained_bundle, tiny_sites):
    bundle = load_bundle(trained_bundle)
    model = bundle.model
    dataset = tiny_sites["hospA"].dataset
    decoder = model.decoder("abdomen")
    frozen = {k: v.clone() for k, v in decoder.state_dict().items() if "calibration" not in k}
    settings = TrainSettings(
        steps=40, augmentation=Augmentation(patch_size=PATCH), progress=False, lr=3e-3
    )
    cases = abdomen_cases(tiny_sites)
    result = calibrate_phase(
        model, "abdomen", dataset.labels, cases, native_prep(dataset), settings
    )
    for name, losses in (
        ("confidence", result.confidence_losses),
        ("anomaly", result.anomaly_losses),
    ):
        assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), name
    after = decoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert result.body_range is not None
    # the tiny abdomen phantoms cover the liver's and the kidneys' heights
    assert result.body_range.lo < 110 < 210 < result.body_range.hi
