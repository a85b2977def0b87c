import nibabel as nib
import numpy as np
import torch

from core.bundle import load_bundle
from core.data.nifti import read_header
from core.data.transforms import IMAGE, LABEL, Augmentation, prepare_image, validation_transforms
from core.domain import CENTROID_WIDTH, SITE_CENTROIDS, descriptors, domain_scores, join_domains
from core.local.calibration import balanced_bce, calibrate_phase, cases_domain, paste_anomalies
from core.local.training import LocalTrainSettings
from core.merge import MergeSettings
from simulations.phantoms.generate import make_case
from tests.models import PATCH, abdomen_cases, held_out_set, native_prep

AIR = 0.1  # -800 HU on the default window: the body lies above


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


def test_calibration_trains_the_heads_only_and_measures_the_domain(trained_bundle, tiny_sites):
    bundle = load_bundle(trained_bundle)
    model = bundle.model
    dataset = tiny_sites["hospA"].dataset
    decoder = model.decoder("abdomen")
    frozen = {k: v.clone() for k, v in decoder.state_dict().items() if "calibration" not in k}
    settings = LocalTrainSettings(
        steps=40,
        augmentation=Augmentation(patch_size=PATCH),
        progress=False,
        lr=3e-3,
        precision="fp32",  # as the fixture's model (see trained_run)
    )
    cases = abdomen_cases(tiny_sites)
    result = calibrate_phase(
        model, "abdomen", dataset.labels, cases, native_prep(dataset), settings
    )
    confidence = result.confidence_losses
    assert np.mean(confidence[-10:]) < 0.9 * np.mean(confidence[:10])
    after = decoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert result.domain is not None and bool((result.domain.thresholds > 0).all())
    # the anomaly head tells pasted foreign tissue from the organs it was pasted into
    prep = native_prep(dataset)
    chain = validation_transforms(prep, dataset.labels, dataset.labels.structures)
    item = chain({"case": held_out_set(dataset).cases[0]})
    full = torch.as_tensor(item[LABEL])[0]
    centre = torch.nonzero(full > 0).float().mean(dim=0).long()  # a patch round the organs
    shape = full.shape
    low = [
        max(0, min(int(c) - p // 2, n - p)) for c, p, n in zip(centre, PATCH, shape, strict=True)
    ]
    at = tuple(slice(a, a + p) for a, p in zip(low, PATCH, strict=True))
    image = torch.as_tensor(item[IMAGE])[(None, slice(None), *at)]
    label = torch.as_tensor(item[LABEL])[(None, slice(None), *at)].long()
    pasted_image, pasted = paste_anomalies(image, label, torch.Generator().manual_seed(1), rate=1)
    model.eval()
    with torch.no_grad():
        x = decoder.last_features(model.encoder(pasted_image))
        anomaly, _ = decoder.calibration(x, decoder.organ_head(x))
    score = torch.sigmoid(anomaly)
    organ = (label > 0) & (pasted < 0.5)
    inside, around = float(score[pasted > 0.5].mean()), float(score[organ].mean())
    assert pasted.sum() > 0 and inside > around + 0.1, (inside, around)


def test_the_balanced_loss_does_not_let_a_rare_group_be_ignored():
    target = torch.zeros(1000)
    target[:3] = 1.0  # three anomalous voxels in a thousand
    anomalous, organ = target > 0.5, torch.zeros(1000, dtype=torch.bool)
    organ[3:100] = True
    groups = (anomalous, organ, ~anomalous & ~organ)
    never = torch.full((1000,), -6.0)  # "never anomalous"
    plain = torch.nn.functional.binary_cross_entropy_with_logits(never, target)
    assert float(plain) < 0.03  # the plain mean barely notices
    assert float(balanced_bce(never, target, groups)) > 1.9  # a third of the weight on three
    inside = torch.where(organ | anomalous, 6.0, -6.0)  # "anomalous wherever an organ is"
    assert float(balanced_bce(inside, target, groups)) > 1.9  # normal organs count a third
    right = torch.where(anomalous, 6.0, -6.0)
    assert float(balanced_bce(right, target, groups)) < 0.01


def test_the_domain_tells_the_sites_cts_from_regions_they_never_saw(tiny_sites, tmp_path):
    dataset = tiny_sites["hospA"].dataset
    prep = native_prep(dataset)
    structures = dataset.labels.structures  # the liver, the spleen and the kidneys
    window = 16  # slices: the decoder's patch along z
    domain = cases_domain(abdomen_cases(tiny_sites), dataset.labels, prep, structures, window)
    assert domain is not None
    assert domain.centroids.shape == (1 + len(structures), SITE_CENTROIDS, CENTROID_WIDTH)
    assert bool((domain.thresholds > 0).all())  # every structure has its row
    centroids, thresholds = join_domains([domain])

    def scores(path, row=0):  # of the slices that hold body
        image = torch.as_tensor(prepare_image(prep, read_header(path))[IMAGE])[0]
        body = (image > AIR).flatten(0, 1).any(dim=0)
        slabs = descriptors(image, prep.spacing_mm[2], window * prep.spacing_mm[2])
        return domain_scores(slabs, centroids, thresholds)[row][body]

    head = make_case(7, ["brain"], "head_neck", 32)
    nib.save(nib.Nifti1Image(head.image, head.affine), tmp_path / "head.nii.gz")
    factor = MergeSettings().domain_factor
    inside = torch.cat([scores(c.image) for c in held_out_set(dataset).cases])
    assert float((inside <= factor).float().mean()) > 0.95  # held-out abdomens
    skull = scores(tmp_path / "head.nii.gz")[-16:]  # the head's upper half (its neck is
    assert bool((skull > factor).all())  # soft tissue round a spine, as an abdomen is)
    liver = 1 + structures.index("liver")  # a liver claimed beside the skull: out
    assert bool((scores(tmp_path / "head.nii.gz", liver)[-16:] > factor).all())
