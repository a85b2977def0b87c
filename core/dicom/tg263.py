"""AAPM TG-263 names for the structures of an RT Structure Set, where the meaning matches.

Treatment planning systems and their scripts often expect TG-263's standard names
(``Kidney_L``, ``SpinalCord``, ``Bone_Mandible``). ``csfl predict --format rtstruct
--roi-names tg263`` writes them for the structures below; a structure without a TG-263
name of the same meaning keeps its vocabulary name. Left out on purpose: the vertebrae
(TG-263's ``VB_*`` name the vertebral body, not the whole vertebra), ``hip_*`` (the hip
bone; TG-263's ``Femur_Head_*`` is the femoral head and neck), the sacrum, sternum and
skull (no TG-263 term of that extent), the lesions (not organs at risk) and the muscles.
"""

from __future__ import annotations

from enum import StrEnum

from core.vocabulary import SIDES

_SIDE = {"left": "L", "right": "R"}

TG263: dict[str, str] = {
    "body": "Body",
    "brain": "Brain",
    "brainstem": "Brainstem",
    "pituitary_gland": "Pituitary",
    "optic_chiasm": "OpticChiasm",
    "oral_cavity": "Cavity_Oral",
    "lips": "Lips",
    "larynx": "Larynx",
    "thyroid_gland": "Glnd_Thyroid",
    "spinal_cord": "SpinalCord",
    "lung": "Lungs",
    "lung_upper_lobe_left": "Lung_LUL",
    "lung_lower_lobe_left": "Lung_LLL",
    "lung_upper_lobe_right": "Lung_RUL",
    "lung_middle_lobe_right": "Lung_RML",
    "lung_lower_lobe_right": "Lung_RLL",
    "trachea": "Trachea",
    "esophagus": "Esophagus",
    "heart": "Heart",
    "liver": "Liver",
    "spleen": "Spleen",
    "gallbladder": "Gallbladder",
    "stomach": "Stomach",
    "pancreas": "Pancreas",
    "kidney": "Kidneys",
    "duodenum": "Duodenum",
    "small_bowel": "Bowel_Small",
    "colon": "Colon",
    "rectum": "Rectum",
    "urinary_bladder": "Bladder",
    "prostate": "Prostate",
    "aorta": "A_Aorta",
    "pulmonary_artery": "A_Pulmonary",
    "pulmonary_vein": "V_Pulmonary",
    "superior_vena_cava": "V_Venacava_S",
    "inferior_vena_cava": "V_Venacava_I",
    "brachiocephalic_trunk": "A_Brachiocephls",
    "mandible": "Bone_Mandible",
}
"""Vocabulary name -> TG-263 name, for the structures whose meaning is the same."""

_PAIRED = {  # vocabulary stem -> TG-263 stem; the side is appended (_L, _R)
    "eye": "Eye",
    "lens": "Lens",
    "optic_nerve": "OpticNrv",
    "cochlea": "Cochlea",
    "parotid_gland": "Parotid",
    "submandibular_gland": "Glnd_Submand",
    "lung": "Lung",
    "heart_atrium": "Atrium",
    "heart_ventricle": "Ventricle",
    "kidney": "Kidney",
    "adrenal_gland": "Glnd_Adrenal",
    "brachiocephalic_vein": "V_Brachioceph",
    "subclavian_artery": "A_Subclavian",
    "common_carotid_artery": "A_Carotid",
    "iliac_artery": "A_Iliac",
    "iliac_vena": "V_Iliac",
    "clavicle": "Clavicle",
    "scapula": "Scapula",
    "humerus": "Humerus",
    "femur": "Femur",
}
for _stem, _name in _PAIRED.items():
    for _side in SIDES:
        TG263[f"{_stem}_{_side}"] = f"{_name}_{_SIDE[_side]}"
for _side in SIDES:
    for _k in range(1, 13):
        TG263[f"rib_{_side}_{_k}"] = f"Rib{_k:02d}_{_SIDE[_side]}"


class RoiNames(StrEnum):
    """How an RT Structure Set names its ROIs: the vocabulary's names or TG-263's."""

    VOCABULARY = "vocabulary"
    TG263 = "tg263"


def roi_name(structure: str, names: RoiNames = RoiNames.VOCABULARY) -> str:
    """The ROIName of a vocabulary structure under a naming scheme.

    Args:
        structure: a vocabulary name (``kidney_left``).
        names: the scheme; under ``tg263`` a structure without a TG-263 name of the
            same meaning keeps its own.
    """
    if names is RoiNames.TG263:
        return TG263.get(structure, structure)
    return structure
