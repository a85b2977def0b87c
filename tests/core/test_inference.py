import dataclasses
import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, ResampleToMatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.bundle import Bundle, load_bundle
from core.data import Case, DataError
from core.data.nifti import read_header, read_volume, write_volume
from core.data.transforms import IMAGE, Preprocessing, prepare_image, preprocessing
from core.domain import TASK_CENTROIDS, VIEWS, view_columns
from core.inference import (
    BODY_MARGIN_MM,
    combined_structures,
    domain_map,
    plan_outputs,
    predict_files,
    predict_volume,
    volume_descriptors,
)
from core.merge import Calibration, DecoderVote, MergeSettings
from core.merge_rules import merge
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.streaming import count_windows
from core.vocabulary import STRUCTURES
from tests.builders import write_raw
from tests.models import TINY


def _model(*tasks):
    model = ContinualSegmenter(Encoder(TINY))
    for name, structures in tasks:
        model.add_decoder(name, Decoder(TINY.widths, Genotype.teacher(3), structures))
    return model


def test_combined_structures_keep_first_appearance_order():
    model = _model(("a", ("liver", "spleen")), ("b", ("kidney_left", "liver")))
    assert combined_structures(model) == ["liver", "spleen", "kidney_left"]


def _lps_input(tmp_path, shape=(22, 18, 13)):
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 400, shape).astype(np.int16)
    affine = np.array([[-2.5, 0, 0, 40.0], [0, -3.0, 0, 30.0], [0, 0, 4.0, -20.0], [0, 0, 0, 1]])
    return write_volume(tmp_path / "lps.nii.gz", image, affine), affine


def test_prediction_lands_on_the_input_grid(tmp_path, trained_bundle):
    bundle = load_bundle(trained_bundle)
    path, affine = _lps_input(tmp_path)
    prediction = predict_volume(bundle, path)
    assert prediction.labels.shape == (22, 18, 13)
    assert np.allclose(prediction.affine, affine)
    assert prediction.labels.dtype == np.uint8


def test_a_trained_bundle_finds_the_liver_in_any_orientation(
    tmp_path, phantom_dataset, trained_bundle
):
    bundle = load_bundle(trained_bundle)
    case = phantom_dataset.cases[0]
    ras = predict_volume(bundle, case.image)
    truth = read_volume(case.label).array
    liver = bundle.model.decoder("abdomen").structures.index("liver") + 1
    overlap = np.logical_and(ras.labels == liver, truth == 1).sum()
    dice = 2 * overlap / ((ras.labels == liver).sum() + (truth == 1).sum())
    assert dice > 0.5
    image = read_volume(case.image)
    n = image.array.shape
    flip = np.array([[-1, 0, 0, n[0] - 1], [0, -1, 0, n[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    lps_path = write_volume(
        tmp_path / "lps.nii.gz", image.array[::-1, ::-1].copy(), image.header.affine @ flip
    )
    lps = predict_volume(bundle, lps_path)
    assert np.array_equal(lps.labels[::-1, ::-1], ras.labels)


def test_input_that_is_not_a_3d_nifti(tmp_path, trained_bundle):
    bundle = load_bundle(trained_bundle)
    path = write_raw(tmp_path / "dyn.nii.gz", np.zeros((8, 8, 8, 3), np.int16))
    with pytest.raises(DataError, match=r"dyn\.nii\.gz: image is 4D"):
        predict_volume(bundle, path)
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.nii\.gz"):
        predict_volume(bundle, text)


def test_files_and_label_tables(tmp_path, trained_bundle):
    bundle = load_bundle(trained_bundle)
    path, _ = _lps_input(tmp_path)
    inputs, outputs, prefix = plan_outputs(path, tmp_path / "out" / "seg.nii.gz")
    written = predict_files(bundle, inputs, outputs, prefix)
    names = sorted(p.name for p in written)
    assert names == ["seg.ctbl", "seg.itksnap.txt", "seg.labels.json", "seg.nii.gz"]
    table = json.loads((tmp_path / "out" / "seg.labels.json").read_text())
    assert [e["structure"] for e in table["labels"]] == list(
        bundle.model.decoder("abdomen").structures
    )
    assert table["labels"][0]["tasks"] == ["abdomen"] and table["merge"]["rule"] == "confidence"
    slicer = (tmp_path / "out" / "seg.ctbl").read_text().splitlines()
    assert slicer[1] == "0 background 0 0 0 0" and slicer[2].startswith("1 liver ")
    itk = (tmp_path / "out" / "seg.itksnap.txt").read_text()
    assert '"Clear Label"' in itk and '"kidney_right"' in itk


def test_plan_outputs_for_folders_and_mistakes(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match=r"no \.nii\.gz"):
        plan_outputs(tmp_path / "in", tmp_path / "out")
    write_raw(tmp_path / "in" / "b.nii.gz", np.zeros((4, 4, 4), np.int16))
    write_raw(tmp_path / "in" / "a.nii", np.zeros((4, 4, 4), np.int16))
    _, outputs, prefix = plan_outputs(tmp_path / "in", tmp_path / "out")
    assert [p.name for p in outputs] == [
        "a.nii",
        "b.nii.gz",
    ] and prefix == tmp_path / "out" / "labels"
    with pytest.raises(ValueError, match="must end in"):
        plan_outputs(tmp_path / "in" / "a.nii", tmp_path / "out")


def _bundle(tasks, calibration=None):
    """Random-weight tiny decoders at the CT's own spacing (2 mm), 16^3 windows."""
    torch.manual_seed(0)
    model = _model(*tasks).eval()
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0))
    return Bundle(model, prep, (16, 16, 16), {}, calibration or {})


def _ct(tmp_path, shape, body=None):
    """Tissue-like noise at 2 mm; with ``body`` (slices), air everywhere else."""
    rng = np.random.default_rng(1)
    image = rng.integers(-200, 300, shape).astype(np.int16)
    if body is not None:
        air = np.full(shape, -1000, np.int16)
        air[body] = image[body]
        image = air
    return write_volume(tmp_path / "ct.nii.gz", image, np.diag([2.0, 2.0, 2.0, 1.0]))


def _whole_volume_labels(bundle, path, settings):
    """The reference: MONAI's windows over the whole volume, every channel held, one merge."""
    item = Compose(preprocessing(bundle.preprocessing, None))({"case": Case("x", path)})
    model = bundle.model

    def heads(x):
        return {f"{t}/{k}": v for t, o in model(x).items() for k, v in o._asdict().items()}

    with torch.no_grad():
        outs = sliding_window_inference(item[IMAGE][None], bundle.roi_size, 1, heads, 0.25)
    votes = []
    for t, d in model.items():
        c = bundle.calibration.get(t, Calibration())
        o = [outs[f"{t}/{k}"].as_tensor() for k in ("organ", "anomaly", "confidence")]
        votes.append(
            DecoderVote.from_logits(t, d.structures, *o, c.calibrated, skill=c.skills(d.structures))
        )
    slabs = volume_descriptors(bundle, item[IMAGE].as_tensor()[0])
    votes = [dataclasses.replace(v, domain=domain_map(model.decoder(v.task), slabs)) for v in votes]
    merged = merge(votes, combined_structures(model), settings)
    moving = MetaTensor(merged[0].float(), affine=item[IMAGE].affine)
    header = read_header(path)
    target = MetaTensor(torch.zeros((1, *header.shape)), affine=torch.as_tensor(header.affine))
    return np.rint(ResampleToMatch(mode="nearest")(moving, target)[0].numpy()).astype(np.uint8)


ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas")


@pytest.mark.parametrize("rule", ["confidence", "highest_probability", "last_decoder"])
def test_streamed_prediction_equals_the_whole_volume_pass(tmp_path, rule):
    skill = {"liver": 0.9, "spleen": 0.4}
    calibration = {t: Calibration(True, skill) for t in ("a", "b")}
    bundle = _bundle([("a", ORGANS[:4]), ("b", ORGANS[2:])], calibration)
    path = _ct(tmp_path, (18, 12, 40))  # 2 x 1 (padded) x 3 windows
    ct = read_volume(path)
    ct.array[..., 20:] += 700  # the upper half looks like bone: another kind of region
    write_volume(path, ct.array, ct.header.affine)
    prep = bundle.preprocessing
    image = prepare_image(prep, read_header(path))[IMAGE][0]
    lower = volume_descriptors(bundle, image)[:16]
    decoder = bundle.model.decoder("a")  # "a" was trained on regions like the lower half
    picked = lower[torch.arange(TASK_CENTROIDS) % len(lower)]
    for view, columns in zip(VIEWS, view_columns(), strict=True):  # each view's centroids
        decoder.domain_centroids[0][:, columns] = picked[:, view]
    decoder.domain_thresholds[0] = 0.05  # its structures have no rows: the background's
    domain = domain_map(decoder, volume_descriptors(bundle, image))
    assert domain is not None and domain.shape == (1 + len(decoder.structures), 40)
    assert domain[:, :4].max() < 2 < domain[:, 36:].min()
    settings = MergeSettings(rule=rule)
    got = predict_volume(bundle, path, settings=settings, precision="fp32").labels
    assert np.array_equal(got, _whole_volume_labels(bundle, path, settings))
    assert len(np.unique(got)) > 2  # the decoders disagree: the merge has work to do


def test_air_around_the_body_is_background_and_never_runs_through_the_network(tmp_path):
    bundle = _bundle([("a", ORGANS[:2])])
    body = (slice(2, 12), slice(3, 13), slice(2, 12))  # windows starting at 24 miss it
    path = _ct(tmp_path, (40, 40, 40), body)
    shapes = []
    bundle.model.encoder.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    labels = predict_volume(bundle, path, precision="fp32").labels
    margin = int(np.ceil(BODY_MARGIN_MM / 2.0))
    box = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in body)
    outside = np.ones(labels.shape, bool)
    outside[box] = False
    assert labels[box].any() and not labels[outside].any()
    ran = count_windows((40, 40, 40), (16, 16, 16), 0.25, box)
    assert len(shapes) == ran < count_windows((40, 40, 40), (16, 16, 16), 0.25)
    # the windows that run are where the whole-volume pass puts them: same labels in the body
    whole = _whole_volume_labels(bundle, path, bundle.merge)
    assert np.array_equal(labels[box], whole[box])


class _LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


def test_no_tensor_holds_every_channel_of_the_volume(tmp_path):
    structures = [s.name for s in STRUCTURES if s.name.startswith(("rib_", "vertebra_"))]
    bundle = _bundle([("a", tuple(structures[:20])), ("b", tuple(structures[20:38]))])
    shape = (16, 16, 128)
    path = _ct(tmp_path, shape)
    channels = sum(len(d.structures) + 3 for _, d in bundle.model.items())
    with _LargestTensor() as probe:
        predict_volume(bundle, path)
    volume = int(np.prod(shape))
    # compact votes and label maps hold one value per voxel, restoring a 4-vector grid
    # (window-sized tensors are smaller); every channel of the volume would be 44 a voxel
    assert probe.largest <= 4 * volume < channels * volume / 10


def test_a_window_not_finite_in_bf16_runs_again_in_fp32(tmp_path, trained_bundle, monkeypatch):
    bundle = load_bundle(trained_bundle)
    path, _ = _lps_input(tmp_path)
    decoder = bundle.model.decoder("abdomen")
    forward = decoder.forward

    def broken_in_bf16(features):
        out = forward(features)
        if torch.is_autocast_enabled("cpu"):  # as a kernel that fails in bf16 would
            return out._replace(anomaly=torch.full_like(out.anomaly, float("nan")))
        return out

    monkeypatch.setattr(decoder, "forward", broken_in_bf16)
    fp32 = predict_volume(bundle, path, precision="fp32")
    again = predict_volume(bundle, path, precision="bf16")
    assert np.array_equal(again.labels, fp32.labels)
