import json

import numpy as np
import pytest
import torch

from core.bodypart import CENTRES_MM
from core.bundle import load_bundle
from core.data import DataError
from core.data.nifti import read_volume, write_volume
from core.inference import (
    combined_structures,
    place_volume,
    plan_outputs,
    predict_files,
    predict_volume,
)
from core.merge import DecoderVote
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from tests.builders import write_raw
from tests.conftest import TINY


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


def _blob_vote(task, structure, z, shape=(12, 12, 40)):
    """A decoder that sees ``structure`` as a 6 x 6 block over slices ``z``, nothing else."""
    organ = torch.zeros(1, 2, *shape)
    organ[0, 0] = 1.0
    organ[0, 1, 3:9, 3:9, z] = 5.0
    flat = torch.zeros(1, 1, *shape)
    return DecoderVote(task, (structure,), organ, flat, flat)


def test_a_structure_found_by_two_decoders_votes_once_in_the_placement():
    affine = np.diag([10.0, 10.0, 10.0, 1.0])  # 1 ml voxels, slice k at 10 k mm
    brain = _blob_vote("head_neck", "brain", slice(25, 35))  # 360 ml: weighs 3.8
    # the same false liver (288 ml, 3.3 each) from two decoders, 264 mm off the brain's offset
    livers = [_blob_vote(t, "liver", slice(5, 13)) for t in ("wholebody", "abdomen")]
    placed = place_volume([brain, *livers], affine, {}, margin=60.0)
    assert placed is not None
    assert placed[29:31].mean() == pytest.approx(CENTRES_MM["brain"], abs=10)
    alone = place_volume(livers[:1], affine, {}, margin=60.0)  # the liver alone places it
    assert alone is not None and alone[8:10].mean() == pytest.approx(CENTRES_MM["liver"], abs=10)
