"""Body-part scale: where along the body an axial slice lies, whatever the field of view.

The scale is millimetres above the L5/S1 disc of a standard adult, superior positive (the
head is near +700, the femoral heads near -150). A volume is placed on it by anatomy, not
by slice indices: every landmark structure that lies wholly inside the volume votes with
the offset between its typical centre (:data:`CENTRES_MM`) and its centre in the volume,
and the median vote wins (a long volume also fits the patient's size). Sites place their
training cases from their label maps; at prediction the model's own segmentation places
the CT. Each decoder records the range
its training data covered and is silent outside it (see ``core.merge``).

The typical centres were measured on the phantoms' standard adult, which is laid out in
the same frame after adult anatomy; long, field-of-view-cut structures (body, spinal
cord, aorta, bowel) and lesions are no landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

INLIER_MM = 40.0  # landmarks whose offsets agree this closely place the volume together
CENTRES_MM: dict[str, float] = {
    "brain": 683,
    "brainstem": 609,
    "pituitary_gland": 609,
    "optic_chiasm": 621,
    "eye_left": 624,
    "eye_right": 624,
    "lens_left": 623,
    "lens_right": 623,
    "optic_nerve_left": 623,
    "optic_nerve_right": 619,
    "cochlea_left": 607,
    "cochlea_right": 607,
    "parotid_gland_left": 579,
    "parotid_gland_right": 579,
    "submandibular_gland_left": 539,
    "submandibular_gland_right": 540,
    "oral_cavity": 556,
    "lips": 558,
    "larynx": 511,
    "thyroid_gland": 468,
    "lung": 343,
    "lung_left": 342,
    "lung_right": 343,
    "lung_upper_lobe_left": 373,
    "lung_lower_lobe_left": 296,
    "lung_upper_lobe_right": 387,
    "lung_middle_lobe_right": 311,
    "lung_lower_lobe_right": 302,
    "trachea": 423,
    "heart": 302,
    "heart_atrium_left": 324,
    "heart_atrium_right": 316,
    "heart_ventricle_left": 283,
    "heart_ventricle_right": 288,
    "heart_myocardium": 286,
    "atrial_appendage_left": 336,
    "liver": 209,
    "spleen": 210,
    "gallbladder": 152,
    "stomach": 206,
    "pancreas": 157,
    "kidney": 119,
    "kidney_left": 125,
    "kidney_right": 111,
    "adrenal_gland_left": 181,
    "adrenal_gland_right": 186,
    "duodenum": 129,
    "rectum": -109,
    "urinary_bladder": -115,
    "prostate": -164,
    "pulmonary_artery": 346,
    "pulmonary_vein": 325,
    "superior_vena_cava": 379,
    "brachiocephalic_trunk": 418,
    "brachiocephalic_vein_left": 419,
    "brachiocephalic_vein_right": 423,
    "subclavian_artery_left": 426,
    "subclavian_artery_right": 434,
    "common_carotid_artery_left": 500,
    "common_carotid_artery_right": 485,
    "iliac_artery_left": -17,
    "iliac_artery_right": -5,
    "iliac_vena_left": -5,
    "iliac_vena_right": -9,
    "skull": 663,
    "mandible": 557,
    "vertebra_C1": 557,
    "vertebra_C2": 538,
    "vertebra_C3": 519,
    "vertebra_C4": 502,
    "vertebra_C5": 486,
    "vertebra_C6": 471,
    "vertebra_C7": 454,
    "vertebra_T1": 436,
    "vertebra_T2": 415,
    "vertebra_T3": 394,
    "vertebra_T4": 373,
    "vertebra_T5": 351,
    "vertebra_T6": 328,
    "vertebra_T7": 305,
    "vertebra_T8": 282,
    "vertebra_T9": 257,
    "vertebra_T10": 232,
    "vertebra_T11": 205,
    "vertebra_T12": 177,
    "vertebra_L1": 147,
    "vertebra_L2": 115,
    "vertebra_L3": 81,
    "vertebra_L4": 47,
    "vertebra_L5": 12,
    "sacrum": -64,
    "vertebra_S1": -19,
    "rib_left_1": 428,
    "rib_left_2": 411,
    "rib_left_3": 381,
    "rib_left_4": 347,
    "rib_left_5": 324,
    "rib_left_6": 297,
    "rib_left_7": 280,
    "rib_left_8": 256,
    "rib_left_9": 234,
    "rib_left_10": 215,
    "rib_left_11": 184,
    "rib_left_12": 159,
    "rib_right_1": 429,
    "rib_right_2": 404,
    "rib_right_3": 376,
    "rib_right_4": 343,
    "rib_right_5": 322,
    "rib_right_6": 295,
    "rib_right_7": 292,
    "rib_right_8": 251,
    "rib_right_9": 235,
    "rib_right_10": 217,
    "rib_right_11": 190,
    "rib_right_12": 157,
    "sternum": 328,
    "clavicle_left": 428,
    "clavicle_right": 422,
    "scapula_left": 358,
    "scapula_right": 356,
    "humerus_left": 322,
    "humerus_right": 319,
    "hip_left": 0,
    "hip_right": -1,
    "femur_left": -150,
    "femur_right": -151,
    "gluteus_maximus_left": -141,
    "gluteus_maximus_right": -143,
    "gluteus_medius_left": -45,
    "gluteus_medius_right": -49,
    "gluteus_minimus_left": -80,
    "gluteus_minimus_right": -73,
}

# Typical volumes (mL) of the landmarks, measured on the same standard adult: a landmark
# far from its volume (a false positive, or a hallucinated organ) weighs less.
VOLUMES_ML: dict[str, float] = {
    "brain": 1781,
    "brainstem": 26,
    "pituitary_gland": 0.5,
    "optic_chiasm": 0.5,
    "eye_left": 6.0,
    "eye_right": 5.4,
    "lens_left": 0.1,
    "lens_right": 0.1,
    "optic_nerve_left": 0.6,
    "optic_nerve_right": 0.6,
    "cochlea_left": 0.3,
    "cochlea_right": 0.2,
    "parotid_gland_left": 17,
    "parotid_gland_right": 17,
    "submandibular_gland_left": 1.9,
    "submandibular_gland_right": 3.3,
    "oral_cavity": 29,
    "lips": 5.3,
    "larynx": 56,
    "thyroid_gland": 14,
    "lung": 3652,
    "lung_left": 1742,
    "lung_right": 1910,
    "lung_upper_lobe_left": 1063,
    "lung_lower_lobe_left": 679,
    "lung_upper_lobe_right": 875,
    "lung_middle_lobe_right": 386,
    "lung_lower_lobe_right": 649,
    "trachea": 24,
    "heart": 320,
    "heart_atrium_left": 35,
    "heart_atrium_right": 27,
    "heart_ventricle_left": 95,
    "heart_ventricle_right": 65,
    "heart_myocardium": 122,
    "atrial_appendage_left": 3.8,
    "liver": 1494,
    "spleen": 206,
    "gallbladder": 33,
    "stomach": 346,
    "pancreas": 51,
    "kidney": 337,
    "kidney_left": 172,
    "kidney_right": 165,
    "adrenal_gland_left": 4.6,
    "adrenal_gland_right": 3.1,
    "duodenum": 44,
    "rectum": 116,
    "urinary_bladder": 163,
    "prostate": 15,
    "pulmonary_artery": 69,
    "pulmonary_vein": 14,
    "superior_vena_cava": 14,
    "brachiocephalic_trunk": 3.1,
    "brachiocephalic_vein_left": 9.5,
    "brachiocephalic_vein_right": 5.3,
    "subclavian_artery_left": 7.7,
    "subclavian_artery_right": 7.6,
    "common_carotid_artery_left": 8.7,
    "common_carotid_artery_right": 7.5,
    "iliac_artery_left": 8.8,
    "iliac_artery_right": 18,
    "iliac_vena_left": 24,
    "iliac_vena_right": 23,
    "skull": 777,
    "mandible": 47,
    "vertebra_C1": 8.2,
    "vertebra_C2": 9.9,
    "vertebra_C3": 9.0,
    "vertebra_C4": 9.3,
    "vertebra_C5": 9.3,
    "vertebra_C6": 8.8,
    "vertebra_C7": 9.4,
    "vertebra_T1": 20,
    "vertebra_T2": 19,
    "vertebra_T3": 19,
    "vertebra_T4": 19,
    "vertebra_T5": 19,
    "vertebra_T6": 19,
    "vertebra_T7": 17,
    "vertebra_T8": 16,
    "vertebra_T9": 16,
    "vertebra_T10": 18,
    "vertebra_T11": 17,
    "vertebra_T12": 17,
    "vertebra_L1": 36,
    "vertebra_L2": 39,
    "vertebra_L3": 39,
    "vertebra_L4": 38,
    "vertebra_L5": 39,
    "sacrum": 258,
    "vertebra_S1": 25,
    "rib_left_1": 8.2,
    "rib_left_2": 13,
    "rib_left_3": 15,
    "rib_left_4": 16,
    "rib_left_5": 16,
    "rib_left_6": 17,
    "rib_left_7": 17,
    "rib_left_8": 16,
    "rib_left_9": 16,
    "rib_left_10": 17,
    "rib_left_11": 12,
    "rib_left_12": 11,
    "rib_right_1": 8.1,
    "rib_right_2": 14,
    "rib_right_3": 16,
    "rib_right_4": 15,
    "rib_right_5": 16,
    "rib_right_6": 17,
    "rib_right_7": 18,
    "rib_right_8": 17,
    "rib_right_9": 17,
    "rib_right_10": 16,
    "rib_right_11": 12,
    "rib_right_12": 11,
    "sternum": 40,
    "clavicle_left": 9.2,
    "clavicle_right": 10,
    "scapula_left": 78,
    "scapula_right": 73,
    "humerus_left": 176,
    "humerus_right": 181,
    "hip_left": 213,
    "hip_right": 204,
    "femur_left": 199,
    "femur_right": 200,
    "gluteus_maximus_left": 434,
    "gluteus_maximus_right": 471,
    "gluteus_medius_left": 147,
    "gluteus_medius_right": 128,
    "gluteus_minimus_left": 32,
    "gluteus_minimus_right": 32,
}


@dataclass(frozen=True)
class BodyRange:
    """An interval of the body-part scale (mm above L5/S1)."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)) or self.lo > self.hi:
            raise ValueError(f"body range [{self.lo}, {self.hi}]: expected finite lo <= hi")

    def union(self, other: BodyRange | None) -> BodyRange:
        """The smallest range covering both."""
        if other is None:
            return self
        return BodyRange(min(self.lo, other.lo), max(self.hi, other.hi))

    def to_json(self) -> list[float]:
        """As ``[lo, hi]`` rounded to 0.1 mm."""
        return [round(self.lo, 1), round(self.hi, 1)]

    @classmethod
    def from_json(cls, value: Any) -> BodyRange | None:
        """From ``[lo, hi]``, or ``None`` for none recorded.

        Raises:
            ValueError: for anything else.
        """
        if value is None:
            return None
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"body range {value!r}: expected [lo, hi]")
        return cls(float(value[0]), float(value[1]))


def slice_heights(affine: NDArray[np.floating], shape: Sequence[int]) -> NDArray[np.float64]:
    """World z (mm, superior positive) of each slice along the last axis of an RAS volume."""
    k = np.arange(shape[2], dtype=np.float64)
    centre = np.stack([np.full_like(k, (shape[0] - 1) / 2), np.full_like(k, (shape[1] - 1) / 2), k])
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(a[2, :3] @ centre + a[2, 3])


@dataclass(frozen=True)
class Landmark:
    """A landmark found in a volume: its height here, its typical height, its weight."""

    structure: str
    here: float
    typical: float
    weight: float


def slice_counts(label: NDArray[np.integer], n_labels: int) -> NDArray[np.int64]:
    """``counts[i, z]``: voxels of label ``i`` (0 to ``n_labels - 1``) in slice ``z``.

    One pass over the map, however many labels; labels outside the range are not counted.
    """
    z = label.shape[-1]
    flat = label.reshape(-1, z).astype(np.int64)
    keep = (flat >= 0) & (flat < n_labels)
    index = flat + n_labels * np.arange(z, dtype=np.int64)[None, :]
    counts = np.bincount(index[keep], minlength=n_labels * z)
    return np.asarray(counts.reshape(z, n_labels).T)


def landmarks(
    label: NDArray[np.integer],
    structures: Sequence[str],
    affine: NDArray[np.floating],
    weights: Sequence[float] | None = None,
    min_voxels: int = 2,
) -> list[Landmark]:
    """The landmarks of a label map that lie wholly inside the volume.

    Args:
        label: ``(X, Y, Z)`` label map of an RAS volume; ``i`` marks ``structures[i - 1]``.
        structures: what the labels mean (canonical names).
        affine: the volume's affine (for slice heights and the voxel volume).
        weights: per structure, how much to believe it (default 1).
        min_voxels: smaller structures do not vote.
    """
    counts = slice_counts(label, len(structures) + 1)
    return counted_landmarks(counts, structures, affine, label.shape, weights, min_voxels)


def counted_landmarks(
    counts: NDArray[np.integer],
    structures: Sequence[str],
    affine: NDArray[np.floating],
    shape: Sequence[int],
    weights: Sequence[float] | None = None,
    min_voxels: int = 2,
) -> list[Landmark]:
    """The landmarks of a volume from its per-slice label counts (see :func:`slice_counts`).

    A landmark weighs the square root of its voxel count (so one big false positive
    cannot outvote several organs), times ``weights`` of its structure, times how
    plausible its volume is (``min(v / typical, typical / v)``).

    Args:
        counts: ``(1 + K, Z)`` voxels per label and slice; row ``i`` is ``structures[i - 1]``.
        structures: what the labels mean (canonical names).
        affine: the volume's affine (for slice heights and the voxel volume).
        shape: the volume's shape.
        weights: per structure, how much to believe it (default 1).
        min_voxels: smaller structures do not vote.
    """
    heights = slice_heights(affine, shape)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000
    found = []
    for i, name in enumerate(structures, 1):
        row = counts[i]
        total = row.sum()
        if name not in CENTRES_MM or total < min_voxels or row[0] or row[-1]:
            continue  # not a landmark, too small, or cut by the field of view
        belief = weights[i - 1] if weights else 1.0
        ratio = total * voxel_ml / VOLUMES_ML[name]
        here = float((row * heights).sum() / total)
        weight = float(np.sqrt(total)) * belief * min(ratio, 1 / ratio)
        found.append(Landmark(name, here, CENTRES_MM[name], weight))
    return found


def place(found: Sequence[Landmark], heights: NDArray[np.floating]) -> NDArray[np.float64] | None:
    """The body-part scale height of every slice of a volume, placed by its landmarks.

    Each landmark votes for the offset between its typical height and its height here.
    The group of votes that all agree with one another within ``INLIER_MM`` with the
    most weight wins, so wrong landmarks (a segmentation's false positives far from their
    organ) cannot move the placement unless they outweigh the right ones; every vote
    within ``INLIER_MM`` of that group's weighted median joins it (a body longer or shorter
    than the standard adult spreads the right votes). Inliers spread over 200 mm or more
    also fit the patient's size (a scale clipped to [0.85, 1.2]; else 1); the offset is
    the weighted median over inliers.

    Returns:
        Heights on the body-part scale, or ``None`` without landmarks.
    """
    found = [f for f in found if f.weight > 0]
    if not found:
        return None
    x = np.asarray([f.here for f in found])
    y = np.asarray([f.typical for f in found])
    w = np.asarray([f.weight for f in found])
    offsets = y - x
    # the agreeing groups are the windows [o, o + INLIER_MM] that start at a vote
    above = offsets[None, :] - offsets[:, None]
    agree = (above >= 0) & (above <= INLIER_MM)
    group = agree[int(np.argmax((agree * w[None, :]).sum(axis=1)))]
    centre = _weighted_median(offsets[group], w[group])
    inliers = np.abs(offsets - centre) <= INLIER_MM
    x, y, w = x[inliers], y[inliers], w[inliers]
    scale = 1.0
    if np.ptp(x) >= 200.0:
        scale = float(np.clip(np.polyfit(x, y, 1, w=np.sqrt(w))[0], 0.85, 1.2))
    offset = _weighted_median(y - scale * x, w)
    return np.asarray(scale * np.asarray(heights, dtype=np.float64) + offset)


def _weighted_median(values: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    """The value below which half the weight lies."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def volume_range(
    label: NDArray[np.integer], structures: Sequence[str], affine: NDArray[np.floating]
) -> BodyRange | None:
    """The body-part range an RAS volume covers, placed by its labelled landmarks."""
    heights = slice_heights(affine, label.shape)
    placed = place(landmarks(label, structures, affine), heights)
    if placed is None:
        return None
    return BodyRange(float(placed.min()), float(placed.max()))
