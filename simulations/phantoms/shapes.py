"""Smooth random shapes on a physical grid: the building blocks of synthetic CT phantoms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

Array = NDArray[np.float32]


@dataclass(frozen=True)
class Grid:
    """World coordinates (RAS, mm) of every voxel centre of a volume."""

    x: Array
    y: Array
    z: Array
    affine: NDArray[np.float64]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], fov_mm: tuple[float, float, float]) -> Grid:
        """A RAS grid of ``shape`` voxels spanning ``fov_mm``, centred on the origin."""
        spacing = np.asarray(fov_mm, dtype=np.float64) / np.asarray(shape)
        origin = -(np.asarray(shape) - 1) / 2 * spacing
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = origin
        axes = [(origin[i] + spacing[i] * np.arange(shape[i])).astype(np.float32) for i in range(3)]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        return cls(x, y, z, affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels per axis."""
        s = self.x.shape
        return (s[0], s[1], s[2])

    @property
    def spacing(self) -> NDArray[np.float64]:
        """Voxel size in mm."""
        return np.abs(np.diag(self.affine)[:3])


def smooth_noise(shape: tuple[int, int, int], cells: int, rng: np.random.Generator) -> Array:
    """Zero-mean noise of unit scale that varies over about ``shape / cells`` voxels."""
    coarse = rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32)
    fine = torch.nn.functional.interpolate(
        torch.from_numpy(coarse), size=shape, mode="trilinear", align_corners=True
    )
    out: Array = fine[0, 0].numpy()
    return out


def ellipsoid_field(
    grid: Grid,
    centre: NDArray[np.floating],
    radii: NDArray[np.floating],
    wobble: Array | None = None,
) -> Array:
    """A level set that is < 1 inside a (wobbly) ellipsoid and grows smoothly outside.

    Args:
        grid: where to evaluate.
        centre: ellipsoid centre, mm.
        radii: semi-axes along x, y, z, mm.
        wobble: smooth noise added to the field, making the shape irregular.
    """
    field = (
        ((grid.x - centre[0]) / radii[0]) ** 2
        + ((grid.y - centre[1]) / radii[1]) ** 2
        + ((grid.z - centre[2]) / radii[2]) ** 2
    )
    out: Array = np.sqrt(field).astype(np.float32)
    return out if wobble is None else out + wobble


def soft_inside(field: Array, edge: float) -> Array:
    """Partial-volume membership in [0, 1]: 1 deep inside, 0.5 on the boundary."""
    inside: Array = np.clip(0.5 + (1.0 - field) / edge, 0.0, 1.0).astype(np.float32)
    return inside
