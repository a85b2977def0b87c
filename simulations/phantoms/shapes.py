"""Shapes as signed distances in millimetres (negative inside), each with a bounding box.

The renderer evaluates a shape only inside its bounding box, which keeps a phantom of
150 structures fast. Distances are exact for tubes and half-spaces and close to exact for
ellipsoids, which is all that partial-volume edges need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]
Points = tuple[Array, Array, Array]
Box = tuple[NDArray[np.float64], NDArray[np.float64]]
UNBOUNDED: Box = (np.full(3, -np.inf), np.full(3, np.inf))


def rotation(x_deg: float = 0.0, y_deg: float = 0.0, z_deg: float = 0.0) -> NDArray[np.float64]:
    """A rotation matrix from angles about x, then y, then z (degrees)."""
    ax, ay, az = np.radians([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out: NDArray[np.float64] = rz @ ry @ rx
    return out


class Shape:
    """A solid: ``sdf`` gives signed distance in mm, ``box`` where it can be negative."""

    def box(self) -> Box:
        """Lower and upper corners (mm) outside which the shape is empty."""
        raise NotImplementedError

    def sdf(self, p: Points) -> Array:
        """Signed distance (mm) at points ``(x, y, z)``; negative inside."""
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid, optionally rotated (``rot`` maps local axes to patient axes)."""

    centre: Sequence[float]
    radii: Sequence[float]
    rot: NDArray[np.float64] | None = None

    def box(self) -> Box:
        """Axis-aligned box of the (rotated) ellipsoid."""
        r = np.asarray(self.radii, dtype=np.float64)
        extent = r if self.rot is None else np.sqrt((self.rot**2) @ (r**2))
        c = np.asarray(self.centre, dtype=np.float64)
        return c - extent, c + extent

    def sdf(self, p: Points) -> Array:
        """Distance scaled by the smallest radius (exact on a sphere)."""
        d = [p[i] - np.float32(self.centre[i]) for i in range(3)]
        if self.rot is not None:
            r = self.rot.astype(np.float32)
            d = [r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3)]
        q = sum((d[i] / np.float32(self.radii[i])) ** 2 for i in range(3))
        out: Array = ((np.sqrt(q) - 1.0) * min(self.radii)).astype(np.float32)
        return out


@dataclass(frozen=True)
class Tube(Shape):
    """A tube along a polyline whose radius varies linearly between the points."""

    points: Sequence[Sequence[float]]
    radii: Sequence[float] | float

    def _radii(self) -> NDArray[np.float64]:
        n = len(self.points)
        r = np.broadcast_to(np.asarray(self.radii, dtype=np.float64), (n,))
        return np.asarray(r)

    def box(self) -> Box:
        """Box of the points, grown by the largest radius."""
        pts = np.asarray(self.points, dtype=np.float64)
        r = float(self._radii().max())
        return pts.min(axis=0) - r, pts.max(axis=0) + r

    def sdf(self, p: Points) -> Array:
        """Distance to the nearest segment minus the local radius."""
        pts = np.asarray(self.points, dtype=np.float32)
        radii = self._radii().astype(np.float32)
        best: Array | None = None
        for k in range(len(pts) - 1):
            a, b = pts[k], pts[k + 1]
            ab = b - a
            denom = max(float(ab @ ab), 1e-6)
            t = ((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / denom
            t = np.clip(t, 0.0, 1.0)
            dist = np.sqrt(sum((p[i] - (a[i] + t * ab[i])) ** 2 for i in range(3)))
            d = dist - (radii[k] + t * (radii[k + 1] - radii[k]))
            best = d if best is None else np.minimum(best, d)
        assert best is not None, "a tube needs at least two points"
        return best.astype(np.float32)


@dataclass(frozen=True)
class HalfSpace(Shape):
    """Points on the side of a plane that ``normal`` points away from (negative inside)."""

    point: Sequence[float]
    normal: Sequence[float]

    def box(self) -> Box:
        """Unbounded."""
        return UNBOUNDED

    def sdf(self, p: Points) -> Array:
        """Signed distance to the plane."""
        n = np.asarray(self.normal, dtype=np.float64)
        n = (n / np.linalg.norm(n)).astype(np.float32)
        out: Array = sum((p[i] - np.float32(self.point[i])) * n[i] for i in range(3))
        return out


@dataclass(frozen=True)
class Intersection(Shape):
    """Inside all of the shapes."""

    shapes: tuple[Shape, ...]

    def box(self) -> Box:
        """The overlap of the boxes."""
        lo = np.max([s.box()[0] for s in self.shapes], axis=0)
        hi = np.min([s.box()[1] for s in self.shapes], axis=0)
        return lo, hi

    def sdf(self, p: Points) -> Array:
        """Maximum of the distances."""
        out = self.shapes[0].sdf(p)
        for s in self.shapes[1:]:
            out = np.maximum(out, s.sdf(p))
        return out


@dataclass(frozen=True)
class Difference(Shape):
    """Inside ``keep`` but not inside ``cut`` (shells, carved bones)."""

    keep: Shape
    cut: Shape

    def box(self) -> Box:
        """The box of ``keep``."""
        return self.keep.box()

    def sdf(self, p: Points) -> Array:
        """``max(keep, -cut)``."""
        return np.maximum(self.keep.sdf(p), -self.cut.sdf(p))


@dataclass(frozen=True)
class Profile(Shape):
    """An elliptic cylinder whose half-axes and centre vary along z (body outlines).

    ``levels`` are rows ``(z, half_width_x, half_depth_y, centre_y)``, increasing in z;
    between rows the values are interpolated, outside them the shape is empty. ``inset``
    shrinks every half-axis by that many mm (fat and muscle layers).
    """

    levels: Sequence[Sequence[float]]
    inset: float = 0.0
    z_inset: Sequence[float] = field(default=(0.0, 0.0))

    def _table(self) -> NDArray[np.float64]:
        return np.asarray(self.levels, dtype=np.float64)

    def box(self) -> Box:
        """Box of the widest level."""
        t = self._table()
        lo = [-t[:, 1].max(), (t[:, 3] - t[:, 2]).min(), t[0, 0] + self.z_inset[0]]
        hi = [t[:, 1].max(), (t[:, 3] + t[:, 2]).max(), t[-1, 0] - self.z_inset[1]]
        return np.asarray(lo), np.asarray(hi)

    def sdf(self, p: Points) -> Array:
        """Radial distance to the interpolated ellipse, capped at both ends in z."""
        t = self._table()
        z = p[2]
        a = np.interp(z, t[:, 0], t[:, 1]).astype(np.float32) - self.inset
        b = np.interp(z, t[:, 0], t[:, 2]).astype(np.float32) - self.inset
        cy = np.interp(z, t[:, 0], t[:, 3]).astype(np.float32)
        a, b = np.maximum(a, 1.0), np.maximum(b, 1.0)
        radial = (np.sqrt((p[0] / a) ** 2 + ((p[1] - cy) / b) ** 2) - 1.0) * np.minimum(a, b)
        below = (t[0, 0] + self.z_inset[0]) - z
        above = z - (t[-1, 0] - self.z_inset[1])
        out: Array = np.maximum(radial, np.maximum(below, above)).astype(np.float32)
        return out
