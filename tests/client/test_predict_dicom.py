"""csfl predict on a DICOM CT series: same labels as its NIfTI twin; SEG and RTSTRUCT out."""

from __future__ import annotations

import logging

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from client.cli import add_commands
from core.bundle import Bundle, save_bundle
from core.data.problems import DataError
from core.data.transforms import Preprocessing
from core.dicom.ct_writer import write_ct_series
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
    (root / "empty").mkdir()
    (root / "papers").mkdir()
    for name in ("report.pdf", "notes.txt"):
        (root / "papers" / name).write_text("not a CT")
    air = nib.Nifti1Image(np.full((32, 32, 8), -1000, dtype=np.int16), twin.affine)
    write_ct_series(air, root / "air")
    return root


def _invoke(root, source, out, *extra):
    return runner.invoke(
        app, ["predict", str(root / "bundle"), str(source), "-o", str(out), *extra]
    )


def _predict(root, source, out, *extra):
    result = _invoke(root, source, out, *extra)
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
        ("series", "x.nii.gz", ["--maps", "maps"], "maps are written for NIfTI input only"),
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


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("empty", "no files; expected a DICOM CT series"),
        ("papers", "2 files, none DICOM (e.g. notes.txt); expected a DICOM CT series"),
        ("series/IM00000", "is one DICOM file; give the folder holding its series"),
    ],
)
def test_folders_without_a_series_say_what_they_hold(setup, tmp_path, source, message):
    for output_format in ("nifti", "seg"):
        out = tmp_path / ("x.nii.gz" if output_format == "nifti" else "x.dcm")
        result = _invoke(setup, setup / source, out, "--format", output_format)
        assert result.exit_code == 2, result.output
        assert result.output == f"error: {setup / source}: {message}\n"


def test_messages_name_the_folder_not_a_temporary_file(setup, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING):
        _predict(setup, setup / "air", tmp_path / "air.nii.gz")
    warnings = [r.getMessage() for r in caplog.records if "no body found" in r.getMessage()]
    assert warnings == [f"{setup / 'air'}: no body found (all air): every voxel is background"]

    def out_of_memory(bundle, path, *args, **kwargs):
        raise DataError(path, f"not enough memory to predict {path}")

    monkeypatch.setattr("core.dicom.predict.predict_volume", out_of_memory)
    result = runner.invoke(
        app,
        ["predict", str(setup / "bundle"), str(setup / "air"), "-o", str(tmp_path / "x.nii.gz")],
    )
    assert result.exit_code == 2
    folder = setup / "air"
    assert result.output == f"error: {folder}: not enough memory to predict {folder}\n"


def test_tg263_roi_names_and_the_seg_creator_from_the_command_line(setup, tmp_path):
    _predict(setup, setup / "series", tmp_path / "rt.dcm", "--format", "rtstruct")
    _predict(
        setup, setup / "series", tmp_path / "tg.dcm", "--format", "rtstruct", "--roi-names", "tg263"
    )
    ours = [str(r.ROIName) for r in pydicom.dcmread(tmp_path / "rt.dcm").StructureSetROISequence]
    tg263 = [str(r.ROIName) for r in pydicom.dcmread(tmp_path / "tg.dcm").StructureSetROISequence]
    renamed = {"liver": "Liver", "spleen": "Spleen", "kidney_left": "Kidney_L"}
    assert ours and tg263 == [renamed[name] for name in ours]
    _predict(setup, setup / "series", tmp_path / "seg.dcm", "--format", "seg", "--creator", "Doe^J")
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").ContentCreatorName) == "Doe^J"
    for option, value, message in [
        ("--roi-names", "nice", "--roi-names 'nice': expected one of vocabulary, tg263"),
        ("--creator", "a\\b", "content creator 'a\\\\b': expected a person name"),
        ("--precision", "fp16", "precision 'fp16': expected one of"),
    ]:
        result = _invoke(
            setup, setup / "series", tmp_path / "z.dcm", "--format", "seg", option, value
        )
        assert result.exit_code == 2 and message in result.output, result.output
