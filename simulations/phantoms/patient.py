"""A synthetic patient: body habitus, per-structure displacement, and the parts to draw.

Anatomy is laid out in a patient frame in millimetres, RAS: +x is the patient's right,
+y anterior, +z superior, with z = 0 at the L5/S1 disc and x = 0 on the midline. Every
atlas function scales a standard adult by the patient's habitus and moves each structure
a little, so no two patients are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulations.phantoms.shapes import Ellipsoid, Shape, Tube

# Paint order: a later layer covers an earlier one where they overlap.
BODY, TISSUE, CAVITY, ORGAN, INNER, VESSEL, BONE, DETAIL, LESION = range(9)


@dataclass(frozen=True)
class Part:
    """One solid piece of a structure, drawn with its own Hounsfield units.

    Attributes:
        structure: the vocabulary name its voxels get.
        shape: where it is.
        hu: its mean Hounsfield units.
        layer: paint order (see the module constants).
        within: draw only over voxels that already belong to this structure (lesions,
            inner parts): a lesion never leaves its organ.
        texture: amplitude (HU) of smooth texture inside it.
        wobble: amplitude (mm) of smooth irregularity of its boundary.
    """

    structure: str
    shape: Shape
    hu: float
    layer: int = ORGAN
    within: str | None = None
    texture: float = 6.0
    wobble: float = 2.0


class Patient:
    """A patient's habitus and random draws; the same seed gives the same patient."""

    def __init__(self, seed: int, lesions: Sequence[str] = (), lesion_rate: float = 0.0) -> None:
        # Separate streams, so that a patient's anatomy is the same with or without lesions.
        self.rng = np.random.default_rng([seed, 0])
        self.lesion_rng = np.random.default_rng([seed, 1])
        self.sz = float(self.rng.uniform(0.92, 1.08))
        self.sx = float(self.sz * self.rng.uniform(0.88, 1.12))
        self.sy = float(self.sx * self.rng.uniform(0.9, 1.1))
        self.lesions = tuple(name for name in lesions if self.lesion_rng.random() < lesion_rate)
        self._offsets: dict[str, np.ndarray] = {}

    def offset(self, name: str, jitter: float) -> np.ndarray:
        """The displacement (mm) of a structure, drawn once so all its parts move together."""
        if name not in self._offsets:
            self._offsets[name] = self.rng.normal(0.0, jitter, 3)
        return self._offsets[name]

    def at(
        self, x: float, y: float, z: float, name: str = "", jitter: float = 4.0
    ) -> tuple[float, float, float]:
        """A standard-patient point, scaled to this patient and displaced with ``name``."""
        o = self.offset(name, jitter) if name else np.zeros(3)
        return (x * self.sx + o[0], y * self.sy + o[1], z * self.sz + o[2])

    def path(
        self, points: Sequence[Sequence[float]], name: str = "", jitter: float = 4.0
    ) -> list[tuple[float, float, float]]:
        """A polyline of standard-patient points, moved together."""
        return [self.at(p[0], p[1], p[2], name, jitter) for p in points]

    def radii(
        self, rx: float, ry: float, rz: float, vary: float = 0.08
    ) -> tuple[float, float, float]:
        """Semi-axes scaled to this patient, each varied by up to ``vary``."""
        u = self.rng.uniform(1 - vary, 1 + vary, 3)
        return (rx * self.sx * u[0], ry * self.sy * u[1], rz * self.sz * u[2])

    def mm(self, r: float) -> float:
        """A length (tube radius, thickness) scaled to this patient."""
        return r * (self.sx + self.sy) / 2

    def tube(
        self,
        name: str,
        points: Sequence[Sequence[float]],
        r: float | Sequence[float],
        hu: float,
        layer: int = ORGAN,
        jitter: float = 4.0,
        **options: Any,
    ) -> Part:
        """A tubular part of ``name`` along standard-patient points (radius scaled)."""
        radii = self.mm(r) if isinstance(r, int | float) else [self.mm(v) for v in r]
        return Part(name, Tube(self.path(points, name, jitter), radii), hu, layer, **options)

    def blob(
        self,
        name: str,
        centre: Sequence[float],
        radii: Sequence[float],
        hu: float,
        layer: int = ORGAN,
        rot: np.ndarray | None = None,
        jitter: float = 4.0,
        **options: Any,
    ) -> Part:
        """An ellipsoidal part of ``name`` at a standard-patient point (size varied)."""
        x, y, z = centre
        shape = Ellipsoid(self.at(x, y, z, name, jitter), self.radii(*radii), rot)
        return Part(name, shape, hu, layer, **options)

    def has(self, lesion: str) -> bool:
        """Whether this patient carries that lesion."""
        return lesion in self.lesions

    def uniform(self, lo: float, hi: float) -> float:
        """A random number in [lo, hi)."""
        return float(self.rng.uniform(lo, hi))
