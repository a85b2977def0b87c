"""Coded anatomy for DICOM output: SNOMED CT concepts for the vocabulary's structures.

One table, :data:`SCT_KEYWORDS`, names the SNOMED CT concept of a structure by its keyword
in pydicom's DICOM code dictionary (``pydicom.sr.codedict.codes.SCT``), so every code value
and meaning comes from the standard's tables rather than from here. A ``_left``/``_right``
structure uses the concept of its stem with the laterality as a modifier (DICOM's way of
saying "left kidney"), and a lesion is a *Neoplasm* or *Cyst* (category *Morphologically
Abnormal Structure*) with its organ as the anatomic region.

Fallback, for a structure the table cannot name: the property type is the generic concept
of its category (SCT 91723000 *Anatomical Structure*, or SCT 85756007 *Tissue* for the
vocabulary's tissues), and the segment or ROI label carries the structure's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from core import anatomy
from core.vocabulary import Group

SCT_KEYWORDS: dict[str, str] = {
    # Head and neck.
    "brain": "Brain",
    "brainstem": "BrainStem",
    "pituitary_gland": "Pituitary",
    "optic_chiasm": "OpticChiasm",
    "eye": "Eye",
    "lens": "Lens",
    "optic_nerve": "OpticNerve",
    "parotid_gland": "ParotidGland",
    "submandibular_gland": "SubmandibularGland",
    "oral_cavity": "OralCavity",
    "lips": "Lip",
    "larynx": "Larynx",
    "thyroid_gland": "Thyroid",
    "spinal_cord": "SpinalCord",
    "mandible": "Mandible",
    "skull": "Skull",
    # Thorax.
    "lung": "Lung",
    "lung_middle_lobe_right": "MiddleLobeOfRightLung",
    "trachea": "Trachea",
    "esophagus": "Esophagus",
    "heart": "Heart",
    "heart_atrium_left": "LeftAtrium",
    "heart_atrium_right": "RightAtrium",
    "heart_ventricle_left": "LeftVentricle",
    "heart_ventricle_right": "RightVentricle",
    "atrial_appendage_left": "LeftAuricularAppendage",
    # Abdomen and pelvis.
    "liver": "Liver",
    "spleen": "Spleen",
    "gallbladder": "Gallbladder",
    "stomach": "Stomach",
    "pancreas": "Pancreas",
    "kidney": "Kidney",
    "adrenal_gland": "AdrenalGland",
    "duodenum": "Duodenum",
    "small_bowel": "SmallIntestine",
    "colon": "Colon",
    "rectum": "Rectum",
    "urinary_bladder": "UrinaryBladderStructure",
    "prostate": "Prostate",
    # Vessels.
    "aorta": "Aorta",
    "pulmonary_artery": "PulmonaryArtery",
    "pulmonary_vein": "PulmonaryVein",
    "superior_vena_cava": "SuperiorVenaCava",
    "inferior_vena_cava": "InferiorVenaCava",
    "brachiocephalic_trunk": "BrachiocephalicTrunk",
    "brachiocephalic_vein": "BrachiocephalicVein",
    "subclavian_artery": "SubclavianArtery",
    "common_carotid_artery": "CommonCarotidArtery",
    "iliac_artery": "CommonIliacArtery",
    "iliac_vena": "CommonIliacVein",
    # Skeleton and soft tissue.
    "sternum": "Sternum",
    "sacrum": "Sacrum",
    "costal_cartilages": "CostalCartilage",
    "clavicle": "Clavicle",
    "scapula": "Scapula",
    "humerus": "Humerus",
    "femur": "Femur",
    "skeletal_muscle": "SkeletalMuscle",
    "subcutaneous_fat": "SubcutaneousTissue",
    "body": "EntireBody",
}
"""Structure (or ``_left``/``_right`` stem) -> keyword of its concept in ``codes.SCT``."""

_LATERALITY = {"left": codes.SCT.Left, "right": codes.SCT.Right}
_ANATOMY = codes.SCT.AnatomicalStructure
_TISSUE = codes.SCT.Tissue
_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure


@dataclass(frozen=True)
class StructureCode:
    """How DICOM names one structure.

    Attributes:
        label: the structure's vocabulary name, the segment or ROI label.
        category: the property category (anatomical structure, tissue, abnormal structure).
        type: the property type (the structure's own concept, or its category's).
        modifier: laterality, for a left or right structure named by its stem.
        region: the organ a lesion lies in, when the table names it.
        coded: whether ``type`` is the structure's own concept (not the fallback).
    """

    label: str
    category: Code
    type: Code
    modifier: Code | None = None
    region: Code | None = None
    coded: bool = True


def _concept(name: str) -> tuple[Code, Code | None] | None:
    """The SNOMED concept of a structure and its laterality, if the table names it."""
    if name in SCT_KEYWORDS:
        return getattr(codes.SCT, SCT_KEYWORDS[name]), None
    stem, _, side = name.rpartition("_")
    if side in _LATERALITY and stem in SCT_KEYWORDS:
        return getattr(codes.SCT, SCT_KEYWORDS[stem]), _LATERALITY[side]
    return None


def structure_code(name: str) -> StructureCode:
    """The DICOM coding of a vocabulary structure (see the module docstring).

    Raises:
        UnknownStructureError: if the name is not in the vocabulary.
    """
    structure = anatomy.get(name)
    if structure.group is Group.LESION:
        kind = codes.SCT.Cyst if "cyst" in name else codes.SCT.Neoplasm
        organ = next((c for w in structure.within if (c := _concept(w)) is not None), None)
        return StructureCode(name, _ABNORMAL, kind, region=organ[0] if organ else None)
    category = _TISSUE if structure.group is Group.TISSUE else _ANATOMY
    concept = _concept(name)
    if concept is None:
        return StructureCode(name, category, category, coded=False)
    return StructureCode(name, category, concept[0], modifier=concept[1])
