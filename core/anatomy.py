"""The anatomy vocabulary: lookups, dataset-name resolution and containment queries.

Every dataset label and every phantom structure maps onto one canonical snake_case name
(``liver``, ``kidney_left``, ``vertebra_L3``, ``rib_left_7``, ``liver_tumor``). Names from
common datasets (TotalSegmentator, the Medical Segmentation Decathlon, AAPM TG-263
radiotherapy names, nnU-Net tables) resolve through :func:`resolve`; generic lesion names
such as MSD's ``"cancer"`` resolve from the organ they sit in (:func:`resolve_table`).

The structures themselves are in :mod:`core.vocabulary`; every structure lies inside
``body`` (implied, not listed in ``within``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from core.vocabulary import SIDES, STRUCTURES, Group, Region, Structure

__all__ = [
    "STRUCTURES",
    "Group",
    "LabelTableError",
    "Region",
    "Structure",
    "UnknownStructureError",
    "by_group",
    "by_region",
    "canonical_order",
    "containers",
    "get",
    "index",
    "is_within",
    "normalize",
    "resolve",
    "resolve_table",
    "suggest",
]


class UnknownStructureError(KeyError):
    """A label name that does not resolve to the vocabulary."""

    def __init__(self, name: str, suggestions: list[str], reason: str = "") -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
        super().__init__(f"{name!r} is not in the anatomy vocabulary{hint}{reason}")

    def __str__(self) -> str:
        return str(self.args[0])


class LabelTableError(ValueError):
    """Some names of a label table do not resolve; the message lists every one of them."""

    def __init__(self, errors: list[UnknownStructureError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


_BY_NAME: dict[str, Structure] = {st.name: st for st in STRUCTURES}
_ORDER: dict[str, int] = {st.name: i for i, st in enumerate(STRUCTURES)}


def normalize(name: str) -> str:
    """Fold a label name to a lookup key: snake case, lower case, sides spelled out.

    ``"OpticNerve_L"`` -> ``"optic_nerve_left"``, ``"Kidney (R)"`` -> ``"kidney_right"``.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    tokens = [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]
    side = {"l": "left", "lt": "left", "r": "right", "rt": "right"}
    return "_".join(side.get(t, t) for t in tokens)


def _aliases() -> dict[str, str]:
    """Dataset spellings (already normalized) that differ from the canonical name."""
    table = {
        # TotalSegmentator v1/v2 spellings.
        "clavicula_left": "clavicle_left",
        "clavicula_right": "clavicle_right",
        "bladder": "urinary_bladder",
        "myocardium": "heart_myocardium",
        # MSD and other challenge names.
        "colon_cancer_primaries": "colon_tumor",
        "liver_cancer": "liver_tumor",
        "liver_lesion": "liver_tumor",
        "lungs": "lung",
        "kidneys": "kidney",
        "bowel": "small_bowel",
        "small_intestine": "small_bowel",
        "gall_bladder": "gallbladder",
        "oesophagus": "esophagus",
        "ivc": "inferior_vena_cava",
        "postcava": "inferior_vena_cava",
        "svc": "superior_vena_cava",
        "portal_vein": "portal_vein_and_splenic_vein",
        "brain_stem": "brainstem",
        "chiasm": "optic_chiasm",
        "pituitary": "pituitary_gland",
        "thyroid": "thyroid_gland",
        "mouth": "oral_cavity",
        # AAPM TG-263 radiotherapy names.
        "bone_mandible": "mandible",
        "a_aorta": "aorta",
        "a_pulmonary": "pulmonary_artery",
        "v_venacava_i": "inferior_vena_cava",
        "v_venacava_s": "superior_vena_cava",
        "bowel_small": "small_bowel",
        "cavity_oral": "oral_cavity",
        "glnd_thyroid": "thyroid_gland",
        "esophagus_cervical": "esophagus",
        "spinalcord": "spinal_cord",
        "opticchiasm": "optic_chiasm",
    }
    for side in SIDES:
        table |= {
            f"opticnrv_{side}": f"optic_nerve_{side}",
            f"optic_nrv_{side}": f"optic_nerve_{side}",
            f"parotid_{side}": f"parotid_gland_{side}",
            f"glnd_submand_{side}": f"submandibular_gland_{side}",
            f"submandibular_{side}": f"submandibular_gland_{side}",
            f"glnd_adrenal_{side}": f"adrenal_gland_{side}",
            f"adrenal_{side}": f"adrenal_gland_{side}",
            f"femur_head_{side}": f"femur_{side}",
            f"a_carotid_{side}": f"common_carotid_artery_{side}",
            f"a_iliac_{side}": f"iliac_artery_{side}",
            f"v_iliac_{side}": f"iliac_vena_{side}",
            f"iliac_vein_{side}": f"iliac_vena_{side}",
            f"atrium_{side}": f"heart_atrium_{side}",
            f"ventricle_{side}": f"heart_ventricle_{side}",
        }
    for st in STRUCTURES:  # TotalSegmentator spells vertebra_L3 as vertebrae_L3
        if st.name.startswith("vertebra_"):
            table[normalize(st.name.replace("vertebra_", "vertebrae_"))] = st.name
    return table


_INDEX: dict[str, str] = {normalize(st.name): st.name for st in STRUCTURES} | _aliases()

# Generic lesion and vessel words (MSD's "cancer", KiTS' "tumor"/"cyst", Task08's "Vessel")
# name a structure only together with the organ of the dataset.
_GENERIC: dict[str, str] = {
    w: "tumor" for w in ("cancer", "tumor", "tumour", "lesion", "mass", "neoplasm", "nodule")
} | {"cyst": "cyst", "vessel": "vessel", "vessels": "vessel"}
_ORGAN_WORDS: dict[str, str] = {
    "liver": "liver",
    "hepatic": "liver",
    "lits": "liver",
    "kidney": "kidney",
    "kits": "kidney",
    "renal": "kidney",
    "pancreas": "pancreas",
    "pancreatic": "pancreas",
    "colon": "colon",
    "lung": "lung",
}
_ORGAN_LESIONS: dict[str, dict[str, str]] = {
    "liver": {"tumor": "liver_tumor", "vessel": "hepatic_vessel"},
    "kidney": {"tumor": "kidney_tumor", "cyst": "kidney_cyst"},
    "pancreas": {"tumor": "pancreas_tumor"},
    "colon": {"tumor": "colon_tumor"},
    "lung": {"tumor": "lung_tumor"},
}


def get(name: str) -> Structure:
    """The structure with this canonical name.

    Raises:
        UnknownStructureError: if ``name`` is not canonical (with the closest names).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownStructureError(name, suggest(name)) from None


def suggest(name: str, n: int = 3) -> list[str]:
    """The canonical names closest to ``name``, best first."""
    keys = difflib.get_close_matches(normalize(name), list(_INDEX), n=n * 3, cutoff=0.5)
    out: list[str] = []
    for key in keys:
        if _INDEX[key] not in out:
            out.append(_INDEX[key])
    return out[:n]


def resolve(name: str) -> str:
    """The canonical name for a dataset's label name.

    Raises:
        UnknownStructureError: if it does not resolve (with the closest names).
    """
    key = normalize(name)
    candidates = [key]
    tokens = key.split("_")
    if tokens and tokens[0] in SIDES:  # "left_kidney" -> "kidney_left"
        candidates.append("_".join([*tokens[1:], tokens[0]]))
    for candidate in candidates:
        if candidate in _INDEX:
            return _INDEX[candidate]
    raise UnknownStructureError(name, suggest(name))


def _organ_of(structure: str) -> str | None:
    """The organ key of ``_ORGAN_LESIONS`` that a structure belongs to, if any."""
    for organ in _ORGAN_LESIONS:
        if structure == organ or is_within(structure, organ):
            return organ
    return None


def resolve_table(names: Iterable[str], context: str = "") -> list[str]:
    """Resolve a dataset's label names (without background), using the dataset as context.

    Generic lesion words (``"cancer"``, ``"tumor"``, ``"cyst"``, ``"vessel"``) resolve from
    the organ labelled beside them, or else from an organ word in ``context`` (typically
    the dataset name, e.g. ``"Task08_HepaticVessel"``).

    Raises:
        LabelTableError: listing every name that does not resolve.
    """
    names = list(names)
    resolved: dict[int, str] = {}
    generic: dict[int, str] = {}
    errors: list[UnknownStructureError] = []
    for i, name in enumerate(names):
        kind = _GENERIC.get(normalize(name))
        if kind is not None:
            generic[i] = kind
            continue
        try:
            resolved[i] = resolve(name)
        except UnknownStructureError as e:
            errors.append(e)
    organs = [o for o in map(_organ_of, resolved.values()) if o is not None]
    organs += [_ORGAN_WORDS[w] for w in normalize(context).split("_") if w in _ORGAN_WORDS]
    for i, kind in generic.items():
        match = next((_ORGAN_LESIONS[o][kind] for o in organs if kind in _ORGAN_LESIONS[o]), None)
        if match is None:
            reason = (
                f": a generic {kind} name needs its organ, labelled beside it or named"
                " in the dataset name (e.g. Task03_Liver)"
            )
            errors.append(UnknownStructureError(names[i], [], reason))
        else:
            resolved[i] = match
    if errors:
        raise LabelTableError(errors)
    return [resolved[i] for i in range(len(names))]


def containers(name: str) -> set[str]:
    """Every structure that ``name`` lies inside, directly or through others."""
    out: set[str] = set()
    todo = list(get(name).within)
    while todo:
        parent = todo.pop()
        if parent not in out:
            out.add(parent)
            todo.extend(get(parent).within)
    return out


def is_within(inner: str, outer: str) -> bool:
    """Whether ``inner`` lies inside ``outer`` (directly or transitively)."""
    return outer in containers(inner)


def by_region(region: Region | str) -> list[str]:
    """Canonical names of the structures in a region, in canonical order."""
    return [st.name for st in STRUCTURES if st.region == Region(region)]


def by_group(group: Group | str) -> list[str]:
    """Canonical names of the structures of a group, in canonical order."""
    return [st.name for st in STRUCTURES if st.group == Group(group)]


def index(name: str) -> int:
    """Position of a canonical name in the vocabulary (stable: new names are appended)."""
    return _ORDER[get(name).name]


def canonical_order(names: Iterable[str]) -> list[str]:
    """Sort canonical names into vocabulary order (for stable label ids)."""
    return sorted(names, key=lambda n: _ORDER[get(n).name])
