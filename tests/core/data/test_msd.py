import json

import numpy as np
import pytest

from core.data import DataError, Layout, load_case, open_dataset
from core.data.nifti import write_volume
from tests.builders import AFFINE, SHAPE, msd_dataset


def test_reads_an_msd_task_and_resolves_cancer_from_the_organ(tmp_path):
    root = msd_dataset(tmp_path / "Task03_Liver", {"0": "background", "1": "liver", "2": "cancer"})
    ds = open_dataset(root)
    assert ds.layout == Layout.MSD
    assert ds.labels.structures == ("liver", "liver_tumor")
    assert [label.source_name for label in ds.labels.labels] == ["liver", "cancer"]
    assert [c.case_id for c in ds.cases] == ["x_0", "x_1"]
    loaded = load_case(ds.cases[0], ds.labels)
    assert set(loaded.label.ravel().tolist()) == {0, 1, 2}


def test_generic_names_resolve_from_the_task_name(tmp_path):
    root = msd_dataset(
        tmp_path / "Task08_HepaticVessel", {"0": "background", "1": "Vessel", "2": "Tumour"}
    )
    assert open_dataset(root).labels.structures == ("hepatic_vessel", "liver_tumor")


def test_missing_listed_file_is_reported_and_the_case_left_out(tmp_path):
    root = msd_dataset(tmp_path / "Task09_Spleen", {"0": "background", "1": "spleen"})
    (root / "imagesTr" / "x_1.nii.gz").unlink()
    ds = open_dataset(root)
    assert [c.case_id for c in ds.cases] == ["x_0"]
    assert len(ds.problems) == 1
    assert ds.problems[0].path == root / "imagesTr" / "x_1.nii.gz"
    assert "training[1]" in ds.problems[0].message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"training": "all"}, "training: expected a list"),
        ({"training": [{"image": "./imagesTr/x_0.nii.gz"}]}, r"training\[0\].*'label'"),
        ({"labels": {"zero": "background", "1": "spleen"}}, "not an integer id"),
        ({"labels": {"1": "spleen"}}, "background"),
        ({"modality": {"0": "CT", "1": "PET"}}, "exactly one channel"),
        ({"training": []}, "no usable case"),
    ],
)
def test_malformed_msd_json(tmp_path, change, match):
    root = msd_dataset(tmp_path / "Task09_Spleen", {"0": "background", "1": "spleen"})
    meta = json.loads((root / "dataset.json").read_text()) | change
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=match) as info:
        open_dataset(root)
    assert info.value.path == root / "dataset.json"


@pytest.mark.parametrize(
    ("where", "escape"),
    [
        ("image", "/etc/passwd.nii.gz"),
        ("label", "../outside.nii.gz"),
        ("image", "./imagesTr/../../outside.nii.gz"),
        ("label", "./linked/outside.nii.gz"),  # a link inside that points outside
    ],
)
def test_listed_paths_may_not_leave_the_dataset_folder(tmp_path, where, escape):
    root = msd_dataset(tmp_path / "Task09_Spleen", {"0": "background", "1": "spleen"})
    write_volume(tmp_path / "outside.nii.gz", np.zeros(SHAPE, np.int16), AFFINE)
    (root / "linked").symlink_to(tmp_path, target_is_directory=True)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1][where] = escape
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"training\[1\]\.{where}: .* expected a path inside") as e:
        open_dataset(root)
    assert e.value.path == root / "dataset.json"


def test_paths_that_climb_back_inside_are_fine(tmp_path):
    root = msd_dataset(tmp_path / "Task09_Spleen", {"0": "background", "1": "spleen"})
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = "./labelsTr/../imagesTr/x_0.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    assert len(open_dataset(root).cases) == 2
