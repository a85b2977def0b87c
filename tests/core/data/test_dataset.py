import numpy as np
import pytest

from core.data import DataError, inspect_case, load_case, read_nnunet, split_cases
from core.data.dataset import Case, LabelTable
from core.data.nifti import write_volume
from tests.builders import AFFINE, SHAPE, nnunet_dataset


@pytest.fixture
def dataset(tmp_path):
    return nnunet_dataset(tmp_path / "D", n_cases=2)


def _label_path(ds, i=0):
    return ds.cases[i].label


def test_label_of_another_shape(dataset):
    write_volume(_label_path(dataset), np.zeros((16, 16, 8), np.uint8), AFFINE)
    with pytest.raises(
        DataError, match=r"label does not match its image: shape \(16, 16, 8\)"
    ) as e:
        load_case(dataset.cases[0], dataset.labels)
    assert e.value.path == _label_path(dataset)


def test_label_with_another_affine(dataset):
    moved = AFFINE.copy()
    moved[:3, 3] = [10.0, 0.0, 0.0]
    write_volume(_label_path(dataset), np.zeros(SHAPE, np.uint8), moved)
    with pytest.raises(DataError, match="affine differs"):
        load_case(dataset.cases[0], dataset.labels)


def test_label_values_outside_the_table(dataset):
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0], label[1, 1, 1] = 7, 9
    write_volume(_label_path(dataset), label, AFFINE)
    with pytest.raises(DataError, match=r"label values \{7, 9\} are not in the label table") as e:
        load_case(dataset.cases[0], dataset.labels)
    assert "expected 0 or one of 1, 2" in str(e.value)


def test_non_integer_label_values(dataset):
    label = np.zeros(SHAPE, np.float32)
    label[0, 0, 0] = 0.5
    write_volume(_label_path(dataset), label, AFFINE)
    with pytest.raises(DataError, match="non-integer"):
        load_case(dataset.cases[0], dataset.labels)


def test_float_label_maps_with_integral_values_load_as_integers(dataset):
    write_volume(_label_path(dataset), np.full(SHAPE, 2.0, np.float32), AFFINE)
    loaded = load_case(dataset.cases[0], dataset.labels)
    assert loaded.label.dtype == np.uint8 and int(loaded.label.max()) == 2


def test_inspect_reports_image_and_label_problems_together(dataset, tmp_path):
    case = dataset.cases[0]
    case.image.write_bytes(b"broken")
    label = np.full(SHAPE, 5, np.uint8)
    write_volume(case.label, label, AFFINE)
    loaded, problems = inspect_case(case, dataset.labels)
    assert loaded is None
    assert {p.path for p in problems} == {case.image, case.label}


def test_image_only_case_loads_without_label(dataset):
    case = Case("x", dataset.cases[0].image)
    loaded = load_case(case, dataset.labels)
    assert loaded.label is None and loaded.image.array.shape == SHAPE


def test_split_is_deterministic_and_covers_every_case(tmp_path):
    ds = read_nnunet(nnunet_dataset(tmp_path / "E", n_cases=10).root)
    train, val = split_cases(ds.cases, 0.2, seed=3)
    _, again_val = split_cases(list(reversed(ds.cases)), 0.2, seed=3)
    assert {c.case_id for c in val} == {c.case_id for c in again_val}
    assert len(val) == 2 and len(train) == 8
    assert {c.case_id for c in train} | {c.case_id for c in val} == {c.case_id for c in ds.cases}
    by_seed = {
        frozenset(c.case_id for c in split_cases(ds.cases, 0.2, seed=s)[1]) for s in range(8)
    }
    assert len(by_seed) > 1  # the seed matters


def test_split_keeps_both_sides_non_empty(tmp_path):
    ds = nnunet_dataset(tmp_path / "F", n_cases=2)
    train, val = split_cases(ds.cases, 0.1)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(ds.cases, 1.0)


def _big_id_case(tmp_path, values):
    """A case whose label map holds ``values`` (int32) in three cubes."""
    image = np.zeros(SHAPE, np.int16)
    label = np.zeros(SHAPE, np.int32)
    for i, value in enumerate(values):
        label[4 * i : 4 * i + 3, 2:5, 2:5] = value
    write_volume(tmp_path / "ct.nii.gz", image, AFFINE)
    write_volume(tmp_path / "label.nii.gz", label, AFFINE)
    return Case("big", tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz")


def test_label_ids_above_uint16_stay_exact(tmp_path):
    names = {1: "spleen", 65537: "liver", 2**31 - 1: "pancreas"}
    table = LabelTable.from_names(names, context="", source=tmp_path)
    case = _big_id_case(tmp_path, [1, 65537, 2**31 - 1])
    label = load_case(case, table).label
    assert label.dtype == np.uint32
    assert sorted(np.unique(label).tolist()) == [0, 1, 65537, 2**31 - 1]  # 65537 % 2**16 == 1
    indices = table.to_indices(label, ("liver", "pancreas"))
    assert indices[0, 3, 3] == 0 and indices[4, 3, 3] == 1 and indices[8, 3, 3] == 2
    assert indices.sum() == 27 * (1 + 2)


def test_a_label_value_that_would_wrap_onto_a_known_id_is_reported(tmp_path):
    table = LabelTable.from_names({1: "spleen"}, context="", source=tmp_path)
    case = _big_id_case(tmp_path, [65537])
    _, problems = inspect_case(case, table)
    assert [p.message for p in problems] == [
        "label values {65537} are not in the label table (expected 0 or one of 1)"
    ]


def test_label_ids_beyond_int32_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"ids \[2147483648\] are not integers 1\.\.2147483647"):
        LabelTable.from_names({2**31: "liver"}, context="", source=tmp_path)
