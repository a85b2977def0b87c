import numpy as np

from core.data import open_dataset
from core.data.check import check_site
from simulations.phantoms import DEMO_STRUCTURES, make_abdomen_case, write_demo_dataset

AIR_HU = -900


def test_same_seed_same_volume_other_seed_other_patient():
    a_img, a_lbl, a_aff = make_abdomen_case(32, seed=5)
    b_img, b_lbl, b_aff = make_abdomen_case(32, seed=5)
    c_img, _, _ = make_abdomen_case(32, seed=6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    assert np.array_equal(a_aff, b_aff)
    assert not np.array_equal(a_img, c_img)


def test_every_organ_is_present_inside_the_body_on_its_side():
    for seed in range(3):
        image, label, affine = make_abdomen_case(40, seed)
        assert image.dtype == np.int16 and label.shape == image.shape
        assert (np.abs(np.diag(affine)[:3]) > 0).all()
        for i, name in enumerate(DEMO_STRUCTURES, 1):
            mask = label == i
            assert mask.sum() > 20, name
            assert (image[mask] > AIR_HU).all(), f"{name} reaches outside the body"
        x_world = affine[0, 0] * np.arange(40) + affine[0, 3]
        centre_x = {
            n: x_world[np.nonzero(label == i)[0]].mean() for i, n in enumerate(DEMO_STRUCTURES, 1)
        }
        assert centre_x["liver"] > 0 > centre_x["spleen"]  # RAS: +x is the patient's right
        assert centre_x["kidney_right"] > 0 > centre_x["kidney_left"]


def test_organs_are_brighter_than_fat_and_darker_than_bone():
    image, label, _ = make_abdomen_case(48, seed=1)
    liver = image[label == 1].mean()
    assert 60 < liver < 160
    assert image.max() > 400  # the spine


def test_partial_labels_draw_the_others_as_background():
    image_all, label_all, _ = make_abdomen_case(32, 2)
    image_part, label_part, _ = make_abdomen_case(32, 2, structures=("spleen",))
    assert np.array_equal(image_all, image_part)
    assert set(np.unique(label_part).tolist()) == {0, 1}
    assert np.array_equal(label_part == 1, label_all == 2)


def test_demo_dataset_reads_back_and_passes_site_check(tmp_path):
    ds = write_demo_dataset(tmp_path, n_cases=2, size=32, seed=1)
    again = open_dataset(ds.root)
    assert again.labels.structures == DEMO_STRUCTURES
    assert len(again.cases) == 2
    assert check_site(tmp_path).ok
    first = ds.cases[0].image.read_bytes()
    write_demo_dataset(tmp_path / "again", n_cases=2, size=32, seed=1)
    assert (
        tmp_path / "again" / ds.root.name / "imagesTr" / ds.cases[0].image.name
    ).read_bytes() == first
