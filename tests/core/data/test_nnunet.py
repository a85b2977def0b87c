import json

import numpy as np
import pytest

from core.data import DataError, Layout, Severity, load_case, open_dataset, read_nnunet
from core.data.nnunet import write_nnunet
from tests.builders import case_arrays, nnunet_dataset


def test_round_trip_is_voxel_identical(tmp_path):
    cases = [case_arrays(f"c{i}", i) for i in range(2)]
    written = write_nnunet(tmp_path / "Dataset001_X", ["liver", "spleen"], cases)
    read = read_nnunet(tmp_path / "Dataset001_X")
    assert read.layout == Layout.NNUNET_V2
    assert read.labels == written.labels
    assert [c.case_id for c in read.cases] == ["c0", "c1"]
    for original, case in zip(cases, read.cases, strict=True):
        loaded = load_case(case, read.labels)
        assert loaded.image.array.dtype == original.image.dtype
        assert np.array_equal(loaded.image.array, original.image)
        assert np.array_equal(loaded.label, original.label)
        assert np.allclose(loaded.image.header.affine, original.affine)


def test_dataset_json_follows_nnunet_v2(tmp_path):
    nnunet_dataset(tmp_path / "Dataset002_Y", n_cases=2)
    meta = json.loads((tmp_path / "Dataset002_Y" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert (tmp_path / "Dataset002_Y" / "imagesTr" / "case_000_0000.nii.gz").is_file()
    assert (tmp_path / "Dataset002_Y" / "labelsTr" / "case_000.nii.gz").is_file()


def test_source_names_map_onto_the_vocabulary(tmp_path):
    root = tmp_path / "Dataset003_Z"
    nnunet_dataset(root)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "Liver": 1, "Spleen": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    table = read_nnunet(root).labels
    assert table.structures == ("liver", "spleen")
    assert [label.source_name for label in table.labels] == ["Liver", "Spleen"]


def _edit(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


def test_missing_dataset_json(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"dataset\.json is missing") as info:
        open_dataset(root)
    assert info.value.path == root / "dataset.json"


def test_dataset_json_that_is_not_json(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    (root / "dataset.json").write_text("{'labels': oops")
    with pytest.raises(DataError, match="not valid JSON"):
        open_dataset(root)


@pytest.mark.parametrize("key", ["channel_names", "labels", "file_ending"])
def test_dataset_json_missing_a_required_key(tmp_path, key):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, **{key: None})
    with pytest.raises(DataError, match=f"missing required key.*{key}"):
        read_nnunet(root)


def test_dataset_json_key_of_the_wrong_type(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, labels=["liver"])
    with pytest.raises(DataError, match="labels: expected an object, found a list"):
        read_nnunet(root)


def test_unknown_label_name_suggests_vocabulary_names(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, labels={"background": 0, "livr": 1, "spleen": 2})
    with pytest.raises(DataError, match=r"'livr' is not in the anatomy vocabulary; closest: liver"):
        read_nnunet(root)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"background": 0, "liver": [1, 2]}, "region-based"),
        ({"background": 0, "liver": 1, "ignore": 2}, "ignore"),
        ({"liver": 1, "spleen": 2}, "background"),
        ({"background": 0, "liver": "1"}, "expected an integer"),
        ({"background": 0, "liver": 1, "Liver": 2}, "both map to 'liver'"),
    ],
)
def test_malformed_label_tables(tmp_path, labels, match):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, labels=labels)
    with pytest.raises(DataError, match=match):
        read_nnunet(root)


def test_multi_channel_and_non_nifti_are_refused(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, channel_names={"0": "CT", "1": "PET"})
    with pytest.raises(DataError, match="exactly one channel"):
        read_nnunet(root)
    _edit(root, channel_names={"0": "CT"}, file_ending=".mha")
    with pytest.raises(DataError, match="file_ending"):
        read_nnunet(root)


def test_empty_dataset(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    for image in (root / "imagesTr").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="no training cases") as info:
        read_nnunet(root)
    assert info.value.path == root / "imagesTr"


def test_cases_with_missing_files_are_left_out_and_reported(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root, n_cases=3)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    ds = read_nnunet(root)
    assert [c.case_id for c in ds.cases] == ["case_000", "case_002"]
    errors = [p for p in ds.problems if p.severity == Severity.ERROR]
    assert len(errors) == 1 and errors[0].path.name == "case_001.nii.gz"
    assert "label map missing for image case_001_0000.nii.gz" in errors[0].message
    assert len(ds.problems) == 1


def test_numtraining_mismatch_is_a_warning(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root, n_cases=2)
    _edit(root, numTraining=5)
    ds = read_nnunet(root)
    assert len(ds.cases) == 2
    assert [p.severity for p in ds.problems] == [Severity.WARNING]
    assert "numTraining is 5 but imagesTr holds 2" in ds.problems[0].message


def test_non_ct_channel_is_a_warning(tmp_path):
    root = tmp_path / "D"
    nnunet_dataset(root)
    _edit(root, channel_names={"0": "MRI"})
    ds = read_nnunet(root)
    assert [p.severity for p in ds.problems] == [Severity.WARNING]
    assert "Hounsfield" in ds.problems[0].message


def test_writer_refuses_unknown_structures_and_mismatched_shapes(tmp_path):
    with pytest.raises(KeyError, match="closest"):
        write_nnunet(tmp_path / "D", ["livr"], [])
    case = case_arrays("c", 0)
    bad = type(case)("c", case.image, case.label[:8], case.affine)
    with pytest.raises(ValueError, match="image shape"):
        write_nnunet(tmp_path / "D", ["liver", "spleen"], [bad])
