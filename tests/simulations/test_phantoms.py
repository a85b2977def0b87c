import numpy as np
import pytest
from scipy import ndimage

from core import anatomy
from core.data import open_dataset
from core.data.check import check_site
from simulations.phantoms import LESIONS, drawable_structures, make_case
from simulations.phantoms.render import NOT_ONE_PIECE, SUPERFICIAL
from simulations.scenario import ScenarioError, load_scenario
from simulations.sites import write_scenario

FULL = np.ones((3, 3, 3), bool)


def test_at_least_143_structures_can_be_drawn():
    names = drawable_structures()
    assert len(names) >= 143
    assert {"vertebra_L3", "rib_left_7", "optic_nerve_right", "liver_tumor", "lens_left"} <= set(
        names
    )


def test_same_seed_same_bytes_other_seed_other_patient():
    a = make_case(5, ["liver", "spleen"], "abdomen", 32)
    b = make_case(5, ["liver", "spleen"], "abdomen", 32)
    c = make_case(6, ["liver", "spleen"], "abdomen", 32)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


def test_scenario_files_are_reproducible(tmp_path, tiny_sites):
    earlier = tiny_sites["hospA"].dataset.root.parent.parent  # the same scenario, all cases
    write_scenario(load_scenario("tiny"), tmp_path, cases=1)  # each site's first case again
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.nii.gz"))
    assert len(files) >= 2 * len(tiny_sites)  # an image and a label per site at least
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (earlier / rel).read_bytes()


def _check_case(structures, region, size, seed, lesions=(), rate=0.0):
    case = make_case(seed, structures, region, size, lesions=lesions, lesion_rate=rate)
    assert case.image.shape == (size,) * 3 and case.image.dtype == np.int16
    spacing = np.abs(np.diag(case.affine)[:3])
    assert np.all(spacing > 0)
    with_body = make_case(
        seed, [*structures, "body"], region, size, lesions=lesions, lesion_rate=rate
    )
    outside = with_body.label == 0
    # The body's outermost voxels in each axial slice (z voxels may be coarser than a scalp).
    in_plane = ndimage.generate_binary_structure(3, 1)
    in_plane[:, :, 0] = in_plane[:, :, 2] = False
    near_outside = ndimage.binary_dilation(outside, structure=in_plane)
    for i, name in enumerate(structures, 1):
        mask = case.label == i
        if anatomy.get(name).group == "lesion" and name not in case.drawn:
            assert not mask.any(), f"{name} labelled in a patient without it"
            continue  # a lesion is present only in the patients who carry it
        assert mask.any(), f"{name} is empty (seed {seed}, {region})"
        assert not (mask & outside).any(), f"{name} leaves the body"
        if name not in NOT_ONE_PIECE:
            _, pieces = ndimage.label(mask, structure=FULL)
            assert pieces == 1, f"{name} is in {pieces} pieces (seed {seed}, {region})"
        if anatomy.get(name).group == "organ" and name not in SUPERFICIAL:
            assert not (mask & near_outside).any(), f"{name} touches the skin"


@pytest.mark.parametrize("scenario", ["tiny", "default"])
def test_scenario_structures_are_present_whole_and_inside_the_body(scenario):
    spec = load_scenario(scenario)
    for site in spec.sites:
        structures = spec.task(site.task).structures
        for i in range(2):
            _check_case(
                structures,
                site.region,
                spec.size,
                spec.case_seed(site.name, i),
                site.lesions,
                site.lesion_rate,
            )


@pytest.mark.slow
def test_wholebody143_structures_at_64_cubed():
    spec = load_scenario("wholebody143")
    union = {s for t in spec.tasks for s in t.structures}
    assert len(union) >= 143
    for site in spec.sites:
        _check_case(
            spec.task(site.task).structures,
            site.region,
            64,
            spec.case_seed(site.name, 0),
            site.lesions,
            1.0,
        )


def test_lesions_lie_inside_their_organ_and_leave_its_outline_alone():
    for seed in range(3):
        healthy = make_case(seed, ["liver", "kidney_left", "kidney_right"], "abdomen", 48)
        sick = make_case(
            seed,
            ["liver", "liver_tumor", "kidney_left", "kidney_right", "kidney_tumor"],
            "abdomen",
            48,
            lesions=LESIONS,
            lesion_rate=1.0,
        )
        assert (sick.label == 2).any() and (sick.label == 5).any()
        organ = {1: (1, 2), 2: (3, 5), 3: (4, 5)}
        assert np.array_equal(np.isin(sick.label, organ[1]), healthy.label == 1)
        kidneys = np.isin(sick.label, (3, 4, 5))
        assert np.array_equal(kidneys, np.isin(healthy.label, (2, 3)))


def test_partial_labels_make_the_rest_background_and_containers_absorb_parts():
    full = make_case(1, ["lung_upper_lobe_left", "lung_lower_lobe_left", "heart"], "thorax", 40)
    merged = make_case(1, ["lung_left"], "thorax", 40)
    assert set(np.unique(merged.label).tolist()) == {0, 1}
    assert np.array_equal(merged.label == 1, np.isin(full.label, (1, 2)))
    assert np.array_equal(merged.image, full.image)


def test_sites_differ_in_scanner_and_field_of_view():
    spec = load_scenario("default")
    a, b = spec.sites_of("wholebody")[:2]
    case_a = make_case(1, ["liver"], a.region, 40, a.scanner)
    case_b = make_case(1, ["liver"], b.region, 40, b.scanner)
    air = (case_a.image < -990) & (case_b.image < -990)
    assert case_b.image[~air].std() != case_a.image[~air].std()
    head = make_case(1, ["eye_left"], "head_neck", 40)
    assert head.affine[2, 3] > case_a.affine[2, 3] + 300  # the head scan starts far higher


def test_written_scenario_reads_back_and_passes_site_check(tiny_sites):
    for site in tiny_sites.values():
        assert site.preview.stat().st_size > 10_000
        ds = open_dataset(site.dataset.root)
        assert ds.labels.structures == site.dataset.labels.structures
        assert check_site(site.dataset.root.parent).ok
    test_root = next(iter(tiny_sites.values())).dataset.root.parent.parent / "test"
    assert sorted(p.name for p in test_root.glob("Dataset*")) == [
        "Dataset001_abdomen",
        "Dataset002_chest",
    ]


def test_bad_scenarios_name_the_field(tmp_path):
    text = tmp_path / "s.toml"
    text.write_text(
        'name = "x"\nsize = 32\n[[tasks]]\nname = "t"\nstage = 1\nstructures = ["livr"]\n'
    )
    with pytest.raises(ScenarioError, match=r"tasks\[0\]\.structures: 'livr'.*closest: liver"):
        load_scenario(text)
    text.write_text(
        'name = "x"\nsize = 32\n[[tasks]]\nname = "t"\nstage = 1\nstructures = ["liver"]\n'
        '[[sites]]\nname = "a"\ntask = "t"\nregion = "moon"\ncases = 1\n'
    )
    with pytest.raises(ScenarioError, match=r"sites\[0\]\.region: 'moon'"):
        load_scenario(text)
    with pytest.raises(ScenarioError, match="built-in ones are"):
        load_scenario("nope")
