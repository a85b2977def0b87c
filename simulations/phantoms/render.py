"""Rasterising parts onto a voxel grid: partial-volume HU, one owner structure per voxel.

Parts are painted in layer order, each only inside its bounding box and only inside the
body (a lesion only inside its organ). Two rules then make every structure usable at any
resolution: a structure smaller than a voxel still claims the free voxel nearest its
centre, and a structure that anatomy says is one piece keeps only its largest connected
piece (stray fragments go to their commonest neighbour).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from core import anatomy
from simulations.phantoms.patient import BODY, CAVITY, Part
from simulations.phantoms.shapes import Points

# Structures that are several pieces or a remainder by nature.
NOT_ONE_PIECE = frozenset(
    {"body", "subcutaneous_fat", "skeletal_muscle", "costal_cartilages", "heart"}
)
# The body wall (fat and muscle under the skin) takes bones, muscles, vessels and these
# superficial organs; every other organ stays inside the cavity it encloses.
WALL = frozenset({"subcutaneous_fat", "skeletal_muscle"})
SUPERFICIAL = frozenset(
    {
        "lips",
        "parotid_gland_left",
        "parotid_gland_right",
        "submandibular_gland_left",
        "submandibular_gland_right",
        "thyroid_gland",
        "larynx",
    }
)


def may_enter_wall(structure: str) -> bool:
    """Whether a structure may lie in the body wall."""
    group = anatomy.get(structure).group
    return structure in SUPERFICIAL or structure in WALL or group in ("bone", "muscle", "vessel")


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS voxel grid: voxel centres at ``origin + index * spacing``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def covering(cls, lo: Sequence[float], hi: Sequence[float], shape: Sequence[int]) -> Grid:
        """``shape`` voxels spanning the box from ``lo`` to ``hi`` (mm)."""
        sp = [(h - lo_) / n for lo_, h, n in zip(lo, hi, shape, strict=True)]
        origin = [lo_ + s / 2 for lo_, s in zip(lo, sp, strict=True)]
        return cls(
            (shape[0], shape[1], shape[2]), (sp[0], sp[1], sp[2]), (origin[0], origin[1], origin[2])
        )

    @property
    def affine(self) -> NDArray[np.float64]:
        """Voxel-to-world (RAS, mm)."""
        out = np.diag([*self.spacing, 1.0])
        out[:3, 3] = self.origin
        return out


@dataclass(frozen=True)
class Pose:
    """Where the patient lies: world = rot @ patient + shift."""

    rot: NDArray[np.float64]
    shift: NDArray[np.float64]

    def to_patient(self, world: Points) -> Points:
        """World coordinates to the patient frame."""
        d = [world[i] - np.float32(self.shift[i]) for i in range(3)]
        r = self.rot.astype(np.float32)
        x, y, z = (r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3))
        return x, y, z

    def world_box(
        self, lo: NDArray[np.float64], hi: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned world box of a patient-frame box."""
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        world = corners @ self.rot.T + self.shift
        return world.min(axis=0), world.max(axis=0)


@dataclass
class Canvas:
    """What rendering produces: HU before the scanner, and the owner of each voxel."""

    hu: NDArray[np.float32]
    owner: NDArray[np.int16]
    names: list[str]

    def index(self, name: str) -> int:
        """Owner value of a structure (0 is outside the body)."""
        return self.names.index(name) + 1


def smooth_noise_field(
    shape: tuple[int, int, int], cells: int, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Zero-mean, unit-scale noise varying over about ``shape / cells`` voxels."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    out: NDArray[np.float32] = fine[0, 0].numpy()
    return out


def _slices(
    grid: Grid, lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> tuple[slice, ...] | None:
    out = []
    for i in range(3):
        a = int(np.floor((lo[i] - grid.origin[i]) / grid.spacing[i]))
        b = int(np.ceil((hi[i] - grid.origin[i]) / grid.spacing[i])) + 1
        a, b = max(a, 0), min(b, grid.shape[i])
        if a >= b:
            return None
        out.append(slice(a, b))
    return tuple(out)


def _world(grid: Grid, sl: tuple[slice, ...]) -> Points:
    axes = [
        (grid.origin[i] + grid.spacing[i] * np.arange(sl[i].start, sl[i].stop)).astype(np.float32)
        for i in range(3)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x, y, z


def render(parts: Sequence[Part], grid: Grid, pose: Pose, rng: np.random.Generator) -> Canvas:
    """Paint parts in layer order onto a fresh canvas (air everywhere)."""
    names = list(dict.fromkeys(part.structure for part in parts))
    canvas = Canvas(np.full(grid.shape, -1000.0, np.float32), np.zeros(grid.shape, np.int16), names)
    cells = max(3, max(grid.shape) // 10)
    wobble = smooth_noise_field(grid.shape, cells, rng)
    texture = smooth_noise_field(grid.shape, cells * 2, rng)
    voxel = float(np.mean(grid.spacing))
    wall = [canvas.index(n) for n in WALL if n in names]
    for part in sorted(parts, key=lambda q: q.layer):
        lo, hi = part.shape.box()
        lo, hi = np.maximum(lo, -1e4), np.minimum(hi, 1e4)
        sl = _slices(grid, *pose.world_box(lo - part.wobble * 3, hi + part.wobble * 3))
        if sl is None:
            continue
        d = part.shape.sdf(pose.to_patient(_world(grid, sl))) + part.wobble * wobble[sl]
        owner = canvas.owner[sl]
        allowed = np.ones(d.shape, bool) if part.layer == BODY else owner != 0
        if part.layer > CAVITY and not may_enter_wall(part.structure):
            allowed &= ~np.isin(owner, wall)
        if part.within is not None:
            allowed &= owner == (canvas.index(part.within) if part.within in names else -1)
        soft = np.clip(0.5 - d / voxel, 0.0, 1.0) * allowed
        hu = canvas.hu[sl]
        hu += soft * (part.hu + part.texture * texture[sl] - hu)
        owner[(d < 0) & allowed] = canvas.index(part.structure)
    return canvas


def claim_missing(canvas: Canvas, parts: Iterable[Part], grid: Grid, pose: Pose) -> None:
    """Give each structure drawn but too small for any voxel the nearest free voxel."""
    counts = np.bincount(canvas.owner.ravel(), minlength=len(canvas.names) + 1)
    claimed: set[tuple[int, ...]] = set()
    first: dict[str, Part] = {}
    for part in parts:
        first.setdefault(part.structure, part)
    for name, part in first.items():
        idx = canvas.index(name)
        if counts[idx] > 0:
            continue
        lo, hi = part.shape.box()
        centre = pose.rot @ ((np.maximum(lo, -1e4) + np.minimum(hi, 1e4)) / 2) + pose.shift
        ijk = np.rint((centre - np.asarray(grid.origin)) / np.asarray(grid.spacing)).astype(int)
        offsets = sorted(np.ndindex(3, 3, 3), key=lambda o: sum((v - 1) ** 2 for v in o))
        for off in offsets:
            v = tuple(int(c) for c in ijk + np.asarray(off) - 1)
            if any(c < 0 or c >= n for c, n in zip(v, grid.shape, strict=True)):
                continue
            current = int(canvas.owner[v])
            inside = (
                current != 0
                if part.within is None
                else current == canvas.index(part.within)
                if part.within in canvas.names
                else False
            )
            if inside and v not in claimed and counts[current] > 1:
                counts[current] -= 1
                counts[idx] += 1
                canvas.owner[v] = idx
                canvas.hu[v] = 0.5 * (canvas.hu[v] + part.hu)
                claimed.add(v)
                break


def keep_one_piece(canvas: Canvas) -> None:
    """Structures that are one piece keep their largest piece; fragments join a neighbour.

    A structure counts together with what lies inside it (a liver with its tumour, a
    lobe with its nodule), so a lesion never splits its organ into "fragments".
    """
    full = np.ones((3, 3, 3), bool)
    for name in canvas.names:
        if name in NOT_ONE_PIECE:
            continue
        idx = canvas.index(name)
        inner = [canvas.index(n) for n in canvas.names if anatomy.is_within(n, name)]
        found = ndimage.find_objects((canvas.owner == idx).astype(np.int8))
        if not found or found[0] is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found[0])
        owner = canvas.owner[sl]
        pieces, n = ndimage.label(np.isin(owner, [idx, *inner]), structure=full)
        if n <= 1:
            continue
        own = owner == idx
        sizes = np.bincount(pieces[own], minlength=n + 1)
        keep = int(np.argmax(sizes))
        for piece in range(1, n + 1):
            mask = (pieces == piece) & own
            if piece == keep or not mask.any():
                continue
            ring = ndimage.binary_dilation(mask, structure=full) & ~mask
            neighbours = owner[ring]
            neighbours = neighbours[neighbours != idx]
            owner[mask] = np.bincount(neighbours).argmax() if neighbours.size else 0
