"""The structure table: canonical names, region, group and containment of 157 structures.

Every structure lies inside ``body``; that is implied, not listed in ``within``. Names are
appended, never reordered, so a structure's position (and its colour) stays stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Region(StrEnum):
    """Where a structure sits along the body; ``trunk`` spans several regions."""

    HEAD = "head"
    NECK = "neck"
    THORAX = "thorax"
    ABDOMEN = "abdomen"
    PELVIS = "pelvis"
    LIMBS = "limbs"
    TRUNK = "trunk"


class Group(StrEnum):
    """What kind of structure it is."""

    ORGAN = "organ"
    LESION = "lesion"
    VESSEL = "vessel"
    BONE = "bone"
    MUSCLE = "muscle"
    TISSUE = "tissue"


@dataclass(frozen=True)
class Structure:
    """One named structure of the vocabulary.

    Attributes:
        name: canonical snake_case name.
        region: where it sits along the body.
        group: what kind of structure it is.
        within: structures it lies inside (it lies inside one of them); empty if none.
    """

    name: str
    region: Region
    group: Group
    within: tuple[str, ...] = ()


R, G = Region, Group
SIDES = ("left", "right")
_LUNG_LOBES = (
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)


def _s(name: str, region: Region, group: Group, *within: str) -> Structure:
    return Structure(name, region, group, within)


def _pair(stem: str, region: Region, group: Group, *within: str) -> list[Structure]:
    """A left/right pair; ``{side}`` in ``within`` names the same-side container."""
    return [
        Structure(f"{stem}_{side}", region, group, tuple(w.format(side=side) for w in within))
        for side in SIDES
    ]


def _build() -> list[Structure]:
    s: list[Structure] = [
        _s("body", R.TRUNK, G.TISSUE),
        _s("subcutaneous_fat", R.TRUNK, G.TISSUE),
        _s("skeletal_muscle", R.TRUNK, G.MUSCLE),
        # Head and neck organs-at-risk.
        _s("brain", R.HEAD, G.ORGAN),
        _s("brainstem", R.HEAD, G.ORGAN),
        _s("pituitary_gland", R.HEAD, G.ORGAN),
        _s("optic_chiasm", R.HEAD, G.ORGAN),
        *_pair("eye", R.HEAD, G.ORGAN),
        *_pair("lens", R.HEAD, G.ORGAN, "eye_{side}"),
        *_pair("optic_nerve", R.HEAD, G.ORGAN),
        *_pair("cochlea", R.HEAD, G.ORGAN),
        *_pair("parotid_gland", R.HEAD, G.ORGAN),
        *_pair("submandibular_gland", R.NECK, G.ORGAN),
        _s("oral_cavity", R.HEAD, G.ORGAN),
        _s("lips", R.HEAD, G.ORGAN),
        _s("larynx", R.NECK, G.ORGAN),
        _s("thyroid_gland", R.NECK, G.ORGAN),
        _s("spinal_cord", R.TRUNK, G.ORGAN),
        # Thorax.
        _s("lung", R.THORAX, G.ORGAN),
        *_pair("lung", R.THORAX, G.ORGAN, "lung"),
        *[_s(lobe, R.THORAX, G.ORGAN, f"lung_{lobe.rsplit('_', 1)[1]}") for lobe in _LUNG_LOBES],
        _s("trachea", R.THORAX, G.ORGAN),
        _s("esophagus", R.THORAX, G.ORGAN),
        _s("heart", R.THORAX, G.ORGAN),
        *_pair("heart_atrium", R.THORAX, G.ORGAN, "heart"),
        *_pair("heart_ventricle", R.THORAX, G.ORGAN, "heart"),
        _s("heart_myocardium", R.THORAX, G.ORGAN, "heart"),
        _s("atrial_appendage_left", R.THORAX, G.ORGAN, "heart"),
        # Abdomen and pelvis.
        _s("liver", R.ABDOMEN, G.ORGAN),
        _s("spleen", R.ABDOMEN, G.ORGAN),
        _s("gallbladder", R.ABDOMEN, G.ORGAN),
        _s("stomach", R.ABDOMEN, G.ORGAN),
        _s("pancreas", R.ABDOMEN, G.ORGAN),
        _s("kidney", R.ABDOMEN, G.ORGAN),
        *_pair("kidney", R.ABDOMEN, G.ORGAN, "kidney"),
        *_pair("adrenal_gland", R.ABDOMEN, G.ORGAN),
        _s("duodenum", R.ABDOMEN, G.ORGAN),
        _s("small_bowel", R.ABDOMEN, G.ORGAN),
        _s("colon", R.ABDOMEN, G.ORGAN),
        _s("rectum", R.PELVIS, G.ORGAN),
        _s("urinary_bladder", R.PELVIS, G.ORGAN),
        _s("prostate", R.PELVIS, G.ORGAN),
        # Lesions, inside their organ.
        _s("liver_tumor", R.ABDOMEN, G.LESION, "liver"),
        _s("kidney_tumor", R.ABDOMEN, G.LESION, "kidney_left", "kidney_right", "kidney"),
        _s("kidney_cyst", R.ABDOMEN, G.LESION, "kidney_left", "kidney_right", "kidney"),
        *_pair("kidney_cyst", R.ABDOMEN, G.LESION, "kidney_{side}"),
        _s("pancreas_tumor", R.ABDOMEN, G.LESION, "pancreas"),
        _s("colon_tumor", R.ABDOMEN, G.LESION, "colon"),
        _s("lung_tumor", R.THORAX, G.LESION, *_LUNG_LOBES, "lung_left", "lung_right", "lung"),
        # Vessels.
        _s("aorta", R.TRUNK, G.VESSEL),
        _s("pulmonary_artery", R.THORAX, G.VESSEL),
        _s("pulmonary_vein", R.THORAX, G.VESSEL),
        _s("superior_vena_cava", R.THORAX, G.VESSEL),
        _s("inferior_vena_cava", R.ABDOMEN, G.VESSEL),
        _s("brachiocephalic_trunk", R.THORAX, G.VESSEL),
        *_pair("brachiocephalic_vein", R.THORAX, G.VESSEL),
        *_pair("subclavian_artery", R.THORAX, G.VESSEL),
        *_pair("common_carotid_artery", R.NECK, G.VESSEL),
        _s("portal_vein_and_splenic_vein", R.ABDOMEN, G.VESSEL),
        _s("hepatic_vessel", R.ABDOMEN, G.VESSEL, "liver"),
        *_pair("iliac_artery", R.PELVIS, G.VESSEL),
        *_pair("iliac_vena", R.PELVIS, G.VESSEL),
        # Skeleton.
        _s("skull", R.HEAD, G.BONE),
        _s("mandible", R.HEAD, G.BONE),
        *[_s(f"vertebra_C{i}", R.NECK, G.BONE) for i in range(1, 8)],
        *[_s(f"vertebra_T{i}", R.THORAX, G.BONE) for i in range(1, 13)],
        *[_s(f"vertebra_L{i}", R.ABDOMEN, G.BONE) for i in range(1, 6)],
        _s("sacrum", R.PELVIS, G.BONE),
        _s("vertebra_S1", R.PELVIS, G.BONE),
        *[_s(f"rib_{side}_{i}", R.THORAX, G.BONE) for side in SIDES for i in range(1, 13)],
        _s("sternum", R.THORAX, G.BONE),
        _s("costal_cartilages", R.THORAX, G.BONE),
        *_pair("clavicle", R.THORAX, G.BONE),
        *_pair("scapula", R.THORAX, G.BONE),
        *_pair("humerus", R.LIMBS, G.BONE),
        *_pair("hip", R.PELVIS, G.BONE),
        *_pair("femur", R.LIMBS, G.BONE),
        # Muscles.
        *_pair("gluteus_maximus", R.PELVIS, G.MUSCLE),
        *_pair("gluteus_medius", R.PELVIS, G.MUSCLE),
        *_pair("gluteus_minimus", R.PELVIS, G.MUSCLE),
        *_pair("autochthon", R.TRUNK, G.MUSCLE),
        *_pair("iliopsoas", R.PELVIS, G.MUSCLE),
    ]
    return s


STRUCTURES: tuple[Structure, ...] = tuple(_build())
"""Every structure of the vocabulary, in a fixed canonical order."""
