"""One synthetic CT: a patient drawn on a scanner's grid, with labels for chosen structures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from core import anatomy
from simulations.phantoms import atlas_abdomen, atlas_head, atlas_skeleton, atlas_thorax
from simulations.phantoms.atlas_body import Body, named_muscles
from simulations.phantoms.patient import Part, Patient
from simulations.phantoms.render import Canvas, Grid, Pose, claim_missing, keep_one_piece, render
from simulations.phantoms.shapes import rotation

# Fields of view for a standard patient (mm): (lower corner, upper corner), z = 0 at L5/S1.
REGIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "head_neck": ((-125.0, -135.0, 440.0), (125.0, 135.0, 790.0)),
    "thorax": ((-260.0, -170.0, 170.0), (260.0, 170.0, 500.0)),
    "abdomen": ((-260.0, -170.0, -40.0), (260.0, 170.0, 320.0)),
    "pelvis": ((-260.0, -170.0, -240.0), (260.0, 170.0, 60.0)),
    "trunk": ((-265.0, -175.0, -240.0), (265.0, 175.0, 500.0)),
    "whole_body": ((-265.0, -175.0, -240.0), (265.0, 175.0, 795.0)),
}
LESIONS = (
    "liver_tumor",
    "kidney_tumor",
    "kidney_cyst_left",
    "kidney_cyst_right",
    "pancreas_tumor",
    "colon_tumor",
    "lung_tumor",
)


@dataclass(frozen=True)
class Scanner:
    """A site's scanner: image noise, blur, calibration offset and patient positioning.

    Attributes:
        noise_hu: standard deviation of voxel noise.
        blur_mm: standard deviation of the point-spread function.
        hu_offset: calibration offset added to every voxel.
        pose_deg: largest rotation of the patient about the body axis.
        shift_mm: largest displacement of the patient on the table.
    """

    noise_hu: float = 12.0
    blur_mm: float = 1.0
    hu_offset: float = 0.0
    pose_deg: float = 4.0
    shift_mm: float = 12.0


@dataclass(frozen=True)
class PhantomCase:
    """A generated CT (int16 HU), its label map, affine, and every structure drawn."""

    image: NDArray[np.int16]
    label: NDArray[np.unsignedinteger]
    affine: NDArray[np.float64]
    drawn: tuple[str, ...]


def draw_patient(p: Patient) -> list[Part]:
    """Every part of a whole-body patient, in atlas order."""
    body = Body(p)
    return [
        *body.parts(p),
        *named_muscles(p),
        *atlas_thorax.lungs(p, body),
        *atlas_thorax.heart(p),
        *atlas_thorax.airway_and_vessels(p),
        *atlas_abdomen.organs(p),
        *atlas_abdomen.vessels(p),
        *atlas_abdomen.lesions(p),
        *atlas_head.brain_and_cord(p),
        *atlas_head.organs_at_risk(p),
        *atlas_skeleton.vertebrae(p),
        *atlas_skeleton.thoracic_cage(p, body.cavity),
        *atlas_skeleton.limbs_and_pelvis(p),
        *atlas_skeleton.skull_and_mandible(p),
    ]


def drawable_structures() -> list[str]:
    """Every vocabulary structure a phantom can draw (lesions included), in vocabulary order."""
    names = {part.structure for part in draw_patient(Patient(0, LESIONS, 1.0))}
    return anatomy.canonical_order(names)


def label_lookup(names: Sequence[str], structures: Sequence[str]) -> NDArray[np.int64]:
    """Owner index -> label id, for labelling only ``structures``.

    A drawn structure takes the id of itself if labelled, else of the nearest labelled
    structure that contains it (a tumour counts as its organ where only the organ is
    labelled), else of ``body`` if that is labelled, else 0 (background).
    """
    ids = {name: i for i, name in enumerate(structures, 1)}
    lookup = np.zeros(len(names) + 1, dtype=np.int64)
    for k, name in enumerate(names, 1):
        frontier, seen = [name], set()
        while frontier and lookup[k] == 0:
            current = frontier.pop(0)
            if current in ids:
                lookup[k] = ids[current]
            seen.add(current)
            frontier += [w for w in anatomy.get(current).within if w not in seen]
        if lookup[k] == 0 and "body" in ids:
            lookup[k] = ids["body"]
    return lookup


def make_case(
    seed: int,
    structures: Sequence[str],
    region: str = "abdomen",
    size: int | Sequence[int] = 64,
    scanner: Scanner | None = None,
    lesions: Sequence[str] = (),
    lesion_rate: float = 0.0,
) -> PhantomCase:
    """Generate one CT of ``region`` on a ``size`` grid, labelling ``structures`` (ids 1..K).

    Raises:
        ValueError: for an unknown region or lesion, or a size below 32.
    """
    if region not in REGIONS:
        raise ValueError(f"region {region!r}: expected one of {', '.join(REGIONS)}")
    unknown = [name for name in lesions if name not in LESIONS]
    if unknown:
        raise ValueError(f"lesions {unknown}: the phantom draws only {', '.join(LESIONS)}")
    for name in structures:
        anatomy.get(name)
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(shape) != 3 or min(shape) < 32:
        raise ValueError(f"size {size}: expected 32 or more voxels per side")
    scanner = scanner or Scanner()
    patient = Patient(seed, lesions, lesion_rate)
    parts = draw_patient(patient)
    # The radiographer sets the scan range on the patient's anatomy: z follows height.
    lo, hi = ([c[0], c[1], c[2] * patient.sz] for c in REGIONS[region])
    grid = Grid.covering(lo, hi, shape)
    rng = np.random.default_rng([seed, 2])  # pose, texture and scanner noise
    pose = Pose(
        rotation(z_deg=rng.uniform(-1, 1) * scanner.pose_deg),
        rng.uniform(-1, 1, 3) * scanner.shift_mm,
    )
    canvas = render(parts, grid, pose, rng)
    claim_missing(canvas, parts, grid, pose)
    keep_one_piece(canvas)
    image = _scan(canvas, grid, scanner, rng)
    label = label_lookup(canvas.names, structures)[canvas.owner]
    dtype = np.uint8 if len(structures) < 256 else np.uint16
    drawn = tuple(n for n in canvas.names if np.any(canvas.owner == canvas.index(n)))
    return PhantomCase(image, label.astype(dtype), grid.affine, drawn)


def _scan(
    canvas: Canvas, grid: Grid, scanner: Scanner, rng: np.random.Generator
) -> NDArray[np.int16]:
    """Blur, noise and calibration of the scanner, then the int16 range of CT."""
    sigma = [scanner.blur_mm / s for s in grid.spacing]
    hu = ndimage.gaussian_filter(canvas.hu, sigma) if scanner.blur_mm > 0 else canvas.hu
    hu = hu + rng.normal(0.0, scanner.noise_hu, grid.shape).astype(np.float32) + scanner.hu_offset
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
