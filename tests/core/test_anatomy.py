import pytest

from core import anatomy
from core.anatomy import Group, LabelTableError, Region, UnknownStructureError

# TotalSegmentator v2's 117 class names, as its masks are named on disk.
TOTALSEG_V2 = (
    "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right "
    "adrenal_gland_left lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right "
    "lung_middle_lobe_right lung_lower_lobe_right esophagus trachea thyroid_gland small_bowel "
    "duodenum colon urinary_bladder prostate kidney_cyst_left kidney_cyst_right sacrum "
    "vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 "
    "vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 "
    "vertebrae_T6 vertebrae_T5 vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 "
    "vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 vertebrae_C3 vertebrae_C2 "
    "vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right "
    "subclavian_artery_left common_carotid_artery_right common_carotid_artery_left "
    "brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left "
    "superior_vena_cava inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left "
    "iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right "
    "scapula_left scapula_right clavicula_left clavicula_right femur_left femur_right hip_left "
    "hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right gluteus_medius_left "
    "gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left "
    "autochthon_right iliopsoas_left iliopsoas_right brain skull "
    + " ".join(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13))
    + " sternum costal_cartilages"
).split()


def test_vocabulary_is_large_unique_and_snake_case():
    names = [s.name for s in anatomy.STRUCTURES]
    assert len(names) >= 143
    assert len(set(names)) == len(names)
    for name in names:
        assert name == name.strip() and " " not in name and "-" not in name


def test_required_families_are_complete():
    names = {s.name for s in anatomy.STRUCTURES}
    vertebrae = [n for n in names if n.startswith("vertebra_") and n != "vertebra_S1"]
    ribs = [n for n in names if n.startswith("rib_")]
    assert len(vertebrae) == 24 and len(ribs) == 24
    for oar in (
        "brainstem",
        "lens_left",
        "optic_nerve_right",
        "optic_chiasm",
        "parotid_gland_left",
        "submandibular_gland_right",
        "cochlea_left",
        "larynx",
        "thyroid_gland",
    ):
        assert anatomy.get(oar).region in (Region.HEAD, Region.NECK)
    assert set(anatomy.by_group(Group.LESION)) >= {"liver_tumor", "kidney_tumor"}
    assert anatomy.by_group("muscle") and anatomy.by_group("vessel")


def test_every_container_exists_and_containment_is_acyclic():
    for structure in anatomy.STRUCTURES:
        assert structure.name not in anatomy.containers(structure.name)
        for parent in structure.within:
            anatomy.get(parent)


def test_lesions_lie_inside_their_organ():
    assert anatomy.is_within("liver_tumor", "liver")
    assert anatomy.is_within("kidney_tumor", "kidney_left")
    assert anatomy.is_within("lung_tumor", "lung")
    assert anatomy.is_within("lung_upper_lobe_left", "lung")  # transitively
    assert anatomy.is_within("lens_right", "eye_right")
    assert not anatomy.is_within("lens_right", "eye_left")
    assert not anatomy.is_within("liver", "liver_tumor")


def test_every_canonical_name_resolves_to_itself():
    for structure in anatomy.STRUCTURES:
        assert anatomy.resolve(structure.name) == structure.name


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("Liver", "liver"),
        ("LIVER", "liver"),
        ("kidney_L", "kidney_left"),
        ("Kidney (R)", "kidney_right"),
        ("Left Kidney", "kidney_left"),
        ("kidney-left", "kidney_left"),
        ("OpticNerve_L", "optic_nerve_left"),
        ("BrainStem", "brainstem"),
        ("Glnd_Submand_R", "submandibular_gland_right"),
        ("Bone_Mandible", "mandible"),
        ("SpinalCord", "spinal_cord"),
        ("Lung_R", "lung_right"),
        ("vertebrae_L3", "vertebra_L3"),
        ("clavicula_left", "clavicle_left"),
        ("colon cancer primaries", "colon_tumor"),
        ("Bladder", "urinary_bladder"),
    ],
)
def test_dataset_aliases_resolve(alias, canonical):
    assert anatomy.resolve(alias) == canonical


def test_all_totalsegmentator_v2_names_resolve_to_distinct_structures():
    resolved = [anatomy.resolve(name) for name in TOTALSEG_V2]
    assert len(TOTALSEG_V2) == 117
    assert len(set(resolved)) == 117


@pytest.mark.parametrize(
    ("names", "context", "expected"),
    [
        (["liver", "cancer"], "Task03_Liver", ["liver", "liver_tumor"]),
        (["pancreas", "cancer"], "Task07_Pancreas", ["pancreas", "pancreas_tumor"]),
        (["Vessel", "Tumour"], "Task08_HepaticVessel", ["hepatic_vessel", "liver_tumor"]),
        (["cancer"], "Task06_Lung", ["lung_tumor"]),
        (["kidney", "tumor", "cyst"], "KiTS23", ["kidney", "kidney_tumor", "kidney_cyst"]),
        (["kidney_left", "tumor"], "", ["kidney_left", "kidney_tumor"]),
    ],
)
def test_generic_lesion_names_resolve_from_their_organ(names, context, expected):
    assert anatomy.resolve_table(names, context) == expected


def test_generic_lesion_without_organ_is_an_error_that_explains():
    with pytest.raises(LabelTableError, match="needs its organ"):
        anatomy.resolve_table(["cancer"], "Task99_Mystery")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownStructureError) as info:
        anatomy.resolve("livr")
    assert info.value.suggestions[0] == "liver"
    assert "liver" in str(info.value)


def test_table_errors_list_every_unknown_name():
    with pytest.raises(LabelTableError) as info:
        anatomy.resolve_table(["liver", "splen", "kidny_left"])
    message = str(info.value)
    assert "'splen'" in message and "'kidny_left'" in message
    assert "spleen" in message and "kidney_left" in message


def test_canonical_order_is_vocabulary_order():
    assert anatomy.canonical_order(["spleen", "brain", "liver"]) == ["brain", "liver", "spleen"]
    with pytest.raises(UnknownStructureError):
        anatomy.canonical_order(["liver", "Liver"])
