"""csfl predict on a DICOM CT series: same labels as its NIfTI twin; SEG and RTSTRUCT out."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from client.cli import add_commands
from core.bundle import Bundle, save_bundle
from core.data.transforms import Preprocessing
from core.dicom.rtstruct import read_rtstruct
from core.dicom.series import read_series
from tests.builders_dicom import phantom_ct, write_shuffled_series
from tests.models import tiny_model

runner = CliRunner()
app = typer.Typer()
add_commands(app)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom-predict")
    model = tiny_model(("liver", "spleen", "kidney_left"), seed=3)
    model.encoder.freeze()
    save_bundle(Bundle(model, Preprocessing((3.0, 3.0, 3.0)), (32, 32, 32), {}), root / "bundle")
    twin, _ = phantom_ct()
    nib.save(twin, root / "twin.nii.gz")
    write_shuffled_series(twin, root / "series")
    return root


def _predict(root, source, out, *extra):
    result = runner.invoke(
        app, ["predict", str(root / "bundle"), str(source), "-o", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    return result


def test_a_series_predicts_the_labels_of_its_nifti_twin(setup, tmp_path):
    _predict(setup, setup / "twin.nii.gz", tmp_path / "twin.nii.gz")
    _predict(setup, setup / "series", tmp_path / "series.nii.gz")
    twin = nib.load(tmp_path / "twin.nii.gz")
    series = nib.load(tmp_path / "series.nii.gz")
    np.testing.assert_allclose(series.affine, twin.affine, atol=1e-4)
    labels = np.asarray(series.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(twin.dataobj))
    assert len(np.unique(labels)) > 1  # the comparison is not of two empty maps
    assert (tmp_path / "series.labels.json").is_file()


def test_seg_and_rtstruct_hold_the_predicted_structures(setup, tmp_path):
    _predict(setup, setup / "series", tmp_path / "labels.nii.gz")
    labels = np.asarray(nib.load(tmp_path / "labels.nii.gz").dataobj)
    structures = ["liver", "spleen", "kidney_left"]
    _, sources = read_series(setup / "series")
    uids = [ds.SOPInstanceUID for ds in sources]
    _predict(setup, setup / "series", tmp_path / "seg.dcm", "--format", "seg")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    for segment in seg.SegmentSequence:
        frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[segment.SegmentNumber])
        want = labels == structures.index(str(segment.SegmentLabel)) + 1
        np.testing.assert_array_equal(frames[..., 0].transpose(2, 1, 0).astype(bool), want)
    present = {structures[i - 1] for i in np.unique(labels) if i}
    assert {str(s.SegmentLabel) for s in seg.SegmentSequence} == present
    _predict(setup, setup / "series", tmp_path / "rt.dcm", "--format", "rtstruct")
    masks = read_rtstruct(pydicom.dcmread(tmp_path / "rt.dcm"), sources)
    assert set(masks) == present
    for name, mask in masks.items():
        want = labels == structures.index(name) + 1
        dice = 2 * np.logical_and(mask, want).sum() / (mask.sum() + want.sum())
        assert dice >= 0.95, (name, dice)


@pytest.mark.parametrize(
    ("source", "out", "extra", "message"),
    [
        ("twin.nii.gz", "x.dcm", ["--format", "seg"], "needs a DICOM CT series folder"),
        ("series", "x.nii.gz", ["--format", "rtstruct"], "end it in .dcm"),
        ("series", "x.nii.gz", ["--format", "png"], "expected one of nifti, seg, rtstruct"),
        ("series", "x.nii.gz", ["--series", "1.2.3"], "1.2.3"),
    ],
)
def test_dicom_mistakes_are_one_line_and_exit_2(setup, tmp_path, source, out, extra, message):
    result = runner.invoke(
        app,
        ["predict", str(setup / "bundle"), str(setup / source), "-o", str(tmp_path / out), *extra],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
