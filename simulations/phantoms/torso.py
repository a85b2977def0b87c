"""A synthetic abdominal CT: body, spine and four organs with per-patient variation.

HU values follow a portal-venous contrast CT (fat about -100, soft tissue 40, liver 110,
kidney cortex 180, bone 500+). RAS world axes: +x is the patient's right, +y anterior,
+z superior, so the liver sits at positive x and the right kidney lies lower than the left.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import anatomy
from core.data import CaseArrays, TaskDataset, write_nnunet
from simulations.phantoms.shapes import Grid, ellipsoid_field, smooth_noise, soft_inside

FOV_MM = (360.0, 280.0, 240.0)
AIR_HU, FAT_HU, SOFT_HU, BONE_HU = -1000.0, -100.0, 40.0, 550.0


@dataclass(frozen=True)
class Organ:
    """Where an organ sits in a standard-size patient, its size and its HU."""

    name: str
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float


ORGANS = (
    Organ("liver", (65.0, 15.0, 35.0), (85.0, 70.0, 65.0), 110.0),
    Organ("spleen", (-85.0, -25.0, 45.0), (32.0, 48.0, 45.0), 120.0),
    Organ("kidney_left", (-58.0, -48.0, -15.0), (26.0, 26.0, 52.0), 180.0),
    Organ("kidney_right", (58.0, -48.0, -30.0), (26.0, 26.0, 52.0), 180.0),
)
DEMO_STRUCTURES = tuple(organ.name for organ in ORGANS)


def make_abdomen_case(
    size: int, seed: int, structures: Sequence[str] = DEMO_STRUCTURES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT.

    Args:
        size: voxels per side (the field of view is fixed, so spacing follows).
        seed: the patient; the same seed gives the same volume.
        structures: which organs are labelled (ids 1..K in this order); the others are
            still drawn, as background, like partially labelled real datasets.

    Returns:
        HU image (int16), label map (uint8) and the voxel-to-RAS affine.
    """
    unknown = [s for s in structures if s not in DEMO_STRUCTURES]
    if unknown:
        raise ValueError(f"structures {unknown} are not drawn by this phantom: {DEMO_STRUCTURES}")
    rng = np.random.default_rng(seed)
    grid = Grid.centred((size, size, size), FOV_MM)
    patient = rng.uniform(0.88, 1.12)
    cells = max(3, size // 12)

    # Body: a fat outline around muscle and visceral soft tissue.
    a, b = 160.0 * patient, 112.0 * patient
    ring = np.sqrt((grid.x / a) ** 2 + (grid.y / b) ** 2) + 0.03 * smooth_noise(
        grid.shape, cells, rng
    )
    edge = 2.0 * float(grid.spacing[:2].max()) / b
    body = soft_inside(ring, edge)
    inner = soft_inside(ring / (1.0 - 22.0 / b), edge)
    image = AIR_HU + body * (FAT_HU - AIR_HU) + inner * (SOFT_HU - FAT_HU)
    owner = np.full(grid.shape, -1, dtype=np.int16)  # which organ a voxel shows, if any

    # Spine: a column of vertebral bodies behind the organs (drawn, not labelled).
    spine_y = -0.62 * b
    column = np.sqrt((grid.x / 17.0) ** 2 + ((grid.y - spine_y) / 15.0) ** 2)
    discs = 0.5 + 0.5 * np.cos(2 * np.pi * grid.z / (32.0 * patient))
    bone = soft_inside(column, 0.4) * np.clip(discs * 3.0, 0.0, 1.0)
    image += bone * (BONE_HU - SOFT_HU)

    for index, organ in enumerate(ORGANS):
        jitter = rng.uniform(-8.0, 8.0, 3) * patient
        centre = np.asarray(organ.centre_mm) * patient + jitter
        radii = np.asarray(organ.radii_mm) * patient * rng.uniform(0.85, 1.15, 3)
        wobble = 0.12 * smooth_noise(grid.shape, cells, rng)
        field = ellipsoid_field(grid, centre, radii, wobble)
        inside = soft_inside(field, 2.0 * float(grid.spacing.max()) / float(radii.min())) * inner
        image += inside * (organ.hu + rng.normal(0.0, 8.0) - image)
        owner[(field < 1.0) & (inner > 0.5)] = index  # later organs cover earlier ones

    image += rng.normal(0.0, 12.0, grid.shape)
    hu = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for label_id, name in enumerate(structures, 1):
        labels[owner == DEMO_STRUCTURES.index(name)] = label_id
    return hu, labels, grid.affine


def demo_cases(n: int, size: int, seed: int, structures: Sequence[str]) -> Iterator[CaseArrays]:
    """``n`` demo patients, case ids ``demo_000``, ``demo_001``, ..."""
    for i in range(n):
        image, labels, affine = make_abdomen_case(size, seed * 100_003 + i, structures)
        yield CaseArrays(f"demo_{i:03d}", image, labels, affine)


def write_demo_dataset(
    out_dir: str | Path,
    n_cases: int = 4,
    size: int = 48,
    seed: int = 0,
    structures: Sequence[str] = DEMO_STRUCTURES,
) -> TaskDataset:
    """Write ``n_cases`` demo patients as nnU-Net v2 ``Dataset001_DemoAbdomen``."""
    for name in structures:
        anatomy.get(name)
    root = Path(out_dir) / "Dataset001_DemoAbdomen"
    return write_nnunet(
        root,
        structures,
        demo_cases(n_cases, size, seed, structures),
        description=f"synthetic abdominal CT phantoms, {size}^3 voxels, seed {seed}",
    )
