import numpy as np
import pytest

from core.bodypart import (
    CENTRES_MM,
    INLIER_MM,
    BodyRange,
    Landmark,
    landmarks,
    place,
    slice_heights,
    volume_range,
)
from core.vocabulary import STRUCTURES
from simulations.phantoms.generate import make_case
from simulations.phantoms.patient import Patient

LABELLED = [s.name for s in STRUCTURES if s.name in CENTRES_MM]


@pytest.mark.parametrize("region", ["head_neck", "thorax", "abdomen", "trunk"])
def test_phantoms_are_placed_on_the_body_scale_by_their_anatomy(region):
    for seed in (3, 4):
        case = make_case(seed, LABELLED, region, 48)
        found = volume_range(case.label, LABELLED, case.affine)
        truth = slice_heights(case.affine, case.label.shape) / Patient(seed).sz
        assert found is not None
        # the patient's height varies by up to 8 %; landmarks still place it within 4 cm
        assert abs(found.lo - truth.min()) < 40 and abs(found.hi - truth.max()) < 40


def test_a_shifted_field_of_view_moves_the_range_not_the_anatomy():
    case = make_case(5, LABELLED, "abdomen", 48)
    shifted = case.affine.copy()
    shifted[2, 3] += 500.0  # the same volume, but the scanner's table origin differs
    a = volume_range(case.label, LABELLED, case.affine)
    b = volume_range(case.label, LABELLED, shifted)
    assert a is not None and b is not None
    assert a.lo == pytest.approx(b.lo) and a.hi == pytest.approx(b.hi)


def test_structures_cut_by_the_field_of_view_and_non_landmarks_do_not_vote():
    label = np.zeros((4, 4, 10), dtype=np.uint8)
    label[:, :, 0:3] = 1  # liver touching the first slice: cut
    label[:, :, 4:6] = 2  # body: no landmark
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    heights = slice_heights(affine, label.shape)  # 0, 10, ... 90 mm
    assert place(landmarks(label, ["liver", "body"], affine), heights) is None
    label[:, :, 0] = 0
    placed = place(landmarks(label, ["liver", "body"], affine), heights)
    assert placed is not None
    assert placed[0] == pytest.approx(CENTRES_MM["liver"] - 15.0)


def test_body_ranges_join_and_round_trip():
    a, b = BodyRange(0.0, 100.0), BodyRange(50.0, 300.0)
    assert a.union(b) == BodyRange(0.0, 300.0) and a.union(None) == a
    assert BodyRange.from_json(a.to_json()) == a and BodyRange.from_json(None) is None
    with pytest.raises(ValueError, match="lo <= hi"):
        BodyRange(5.0, 1.0)
    with pytest.raises(ValueError, match="expected"):
        BodyRange.from_json([float("nan"), 1.0])


def test_a_few_wrong_landmarks_do_not_move_the_placement():
    case = make_case(6, LABELLED, "abdomen", 48)
    heights = slice_heights(case.affine, case.label.shape)
    right = place(landmarks(case.label, LABELLED, case.affine), heights)
    wrong = case.label.copy()
    brain = LABELLED.index("brain") + 1  # a false "brain" in the abdomen, far from the head
    wrong[20:24, 20:24, 20:24] = brain
    placed = place(landmarks(wrong, LABELLED, case.affine), heights)
    assert right is not None and placed is not None
    assert np.allclose(placed, right)


def test_a_group_wins_only_when_its_votes_agree_with_one_another():
    # a head CT (slices at 410-730 mm) that trunk models read as a squeezed abdomen: a
    # false liver, stomach and kidneys, each within INLIER_MM of the stomach's vote but
    # not of one another (the demo's failure, 2026-12-02), against the real brain
    head = [Landmark("brain", 625.5, 683, 50.7), Landmark("parotid_gland_left", 532, 579, 1.9)]
    trunk = [
        Landmark("liver", 614.5, 209, 40.0),
        Landmark("stomach", 635.0, 206, 2.4),
        Landmark("kidney_left", 575.8, 125, 8.6),
        Landmark("kidney_right", 576.9, 111, 9.0),
    ]
    heights = np.arange(410.0, 731.0, 8.0)
    placed = place(head + trunk, heights)
    assert placed is not None and placed[0] == pytest.approx(410 + 57.5, abs=INLIER_MM)
    squeezed = [Landmark(f.structure, f.here, f.typical, 100.0) for f in trunk]
    placed = place(head + squeezed, heights)  # heavier, the squeezed group still places it
    assert placed is not None and placed[0] < 0
