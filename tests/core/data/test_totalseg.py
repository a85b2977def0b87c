import numpy as np
import pytest

from core.data import DataError, Layout, Severity, combine_masks, load_case, open_dataset
from tests.builders import SHAPE, totalseg_case


def _box(lo, hi):
    mask = np.zeros(SHAPE, np.uint8)
    mask[lo:hi, lo:hi, lo:hi] = 1
    return mask


def test_reads_cases_with_vocabulary_ids_in_canonical_order(tmp_path):
    masks = {"spleen": _box(0, 3), "liver": _box(4, 12), "vertebrae_L3": _box(13, 15)}
    totalseg_case(tmp_path, "s0001", masks)
    totalseg_case(tmp_path, "s0002", masks, seed=1)
    ds = open_dataset(tmp_path)
    assert ds.layout == Layout.TOTALSEGMENTATOR
    assert ds.labels.structures == ("liver", "spleen", "vertebra_L3")
    assert [c.case_id for c in ds.cases] == ["s0001", "s0002"]
    label = load_case(ds.cases[0], ds.labels).label
    assert label[1, 1, 1] == ds.labels.id_of("spleen")
    assert label[14, 14, 14] == ds.labels.id_of("vertebra_L3")


def test_overlapping_masks_resolve_to_the_smaller_structure(tmp_path):
    liver, tumor = _box(2, 14), _box(6, 9)
    totalseg_case(tmp_path, "s0001", {"liver": liver, "liver_tumor": tumor})
    ds = open_dataset(tmp_path)
    label = load_case(ds.cases[0], ds.labels).label
    assert np.all(label[tumor == 1] == ds.labels.id_of("liver_tumor"))
    only_liver = (liver == 1) & (tumor == 0)
    assert np.all(label[only_liver] == ds.labels.id_of("liver"))
    assert np.all(label[liver == 0] == 0)


def test_combine_rule_is_independent_of_order_and_breaks_ties_by_id():
    a, b, same = _box(0, 8), _box(4, 6), _box(0, 8)
    forward = combine_masks([(1, a), (2, b), (3, same)], np.uint8)
    backward = combine_masks([(3, same), (2, b), (1, a)], np.uint8)
    assert np.array_equal(forward, backward)
    assert forward[5, 5, 5] == 2  # the smaller mask wins
    assert forward[1, 1, 1] == 3  # equal sizes: the higher id wins


def test_unknown_mask_names_are_listed_with_suggestions(tmp_path):
    totalseg_case(tmp_path, "s0001", {"livr": _box(0, 3), "splen": _box(4, 6)})
    with pytest.raises(DataError, match=r"'livr'.*closest: liver.*'splen'.*spleen"):
        open_dataset(tmp_path)


def test_a_missing_mask_is_a_warning_and_counts_as_absent(tmp_path):
    totalseg_case(tmp_path, "s0001", {"liver": _box(0, 3), "spleen": _box(4, 6)})
    totalseg_case(tmp_path, "s0002", {"liver": _box(0, 3)})
    ds = open_dataset(tmp_path)
    assert [p.severity for p in ds.problems] == [Severity.WARNING]
    assert "spleen" in ds.problems[0].message
    label = load_case(ds.cases[1], ds.labels).label
    assert ds.labels.id_of("spleen") not in label


def test_non_binary_mask_is_an_error(tmp_path):
    mask = _box(0, 3) * 2
    totalseg_case(tmp_path, "s0001", {"liver": mask})
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match="not binary") as info:
        load_case(ds.cases[0], ds.labels)
    assert info.value.path.name == "liver.nii.gz"
