"""Body outline (skin, subcutaneous fat, muscle wall, arms) and the named muscles."""

from __future__ import annotations

import numpy as np

from simulations.phantoms.patient import BODY, CAVITY, ORGAN, TISSUE, Part, Patient
from simulations.phantoms.shapes import Ellipsoid, Profile, Tube, rotation

# Standard outline, rows (z, half-width x, half-depth y, centre y), feet to vertex.
BODY_LEVELS = (
    (-260, 170, 112, 5), (-150, 185, 120, 5), (-60, 180, 122, 5), (0, 172, 120, 5),
    (100, 160, 115, 5), (180, 158, 115, 0), (260, 165, 120, -5), (340, 168, 125, -10),
    (400, 170, 122, -15), (425, 160, 112, -20), (445, 125, 92, -18), (465, 75, 66, -12),
    (480, 64, 62, -10), (530, 58, 60, -5), (555, 64, 88, 12), (600, 74, 98, 4),
    (650, 82, 102, -6), (690, 83, 102, -12), (730, 78, 94, -14), (760, 66, 80, -15),
    (780, 48, 58, -15), (795, 16, 20, -15),
)  # fmt: skip
HEAD_Z = 450.0  # above this (neck and head) the fat and muscle layers are thin
RIB_MARGIN = 8.0  # mm between the muscle wall and the thoracic cavity


class Body:
    """A patient's outline and the layers inside it.

    Attributes:
        levels: the outline scaled to the patient.
        fat: subcutaneous fat thickness of the trunk (mm); habitus varies it widely.
        muscle: thickness of the muscle wall of the trunk (mm).
    """

    def __init__(self, p: Patient) -> None:
        self.levels = [(z * p.sz, a * p.sx, b * p.sy, cy * p.sy) for z, a, b, cy in BODY_LEVELS]
        self.fat = p.mm(18) * p.uniform(0.6, 1.8)
        self.muscle = p.mm(12) * p.uniform(0.85, 1.2)
        self.head_z = HEAD_Z * p.sz

    def _at(self, z: float) -> tuple[float, float, float]:
        t = np.asarray(self.levels)
        return tuple(float(np.interp(z, t[:, 0], t[:, i])) for i in (1, 2, 3))  # type: ignore[return-value]

    def cavity(self, z: float) -> tuple[float, float, float]:
        """Half-axes and centre y of the cavity inside the muscle wall at height z."""
        a, b, cy = self._at(z)
        inset = self.fat + self.muscle + RIB_MARGIN if z < self.head_z else 10.0
        return a - inset, b - inset, cy

    def parts(self, p: Patient) -> list[Part]:
        """Skin-to-cavity layers of the trunk and head, and the arms at the sides."""
        trunk = [row for row in self.levels if row[0] <= self.head_z + 20]
        head = [row for row in self.levels if row[0] >= self.head_z - 20]
        parts = []
        for rows, fat, muscle in ((trunk, self.fat, self.muscle), (head, p.mm(5), p.mm(6))):
            parts += [
                Part("subcutaneous_fat", Profile(rows), -100.0, BODY, texture=10, wobble=3),
                Part(
                    "skeletal_muscle", Profile(rows, inset=fat), 50.0, TISSUE, texture=8, wobble=2
                ),
                Part(
                    "body", Profile(rows, inset=fat + muscle), -20.0, CAVITY, texture=25, wobble=2
                ),
            ]
        for side in (1, -1):
            arm = p.path(
                [(side * 175, -30, 440), (side * 212, -22, 300), (side * 218, -18, 120)],
                f"arm{side}",
                3,
            )
            parts += [
                Part(
                    "subcutaneous_fat",
                    Tube(arm, [p.mm(48), p.mm(44), p.mm(40)]),
                    -100.0,
                    BODY,
                    wobble=2,
                ),
                Part(
                    "skeletal_muscle",
                    Tube(arm, [p.mm(40), p.mm(36), p.mm(33)]),
                    50.0,
                    TISSUE,
                    wobble=2,
                ),
            ]
        return parts


def named_muscles(p: Patient) -> list[Part]:
    """Autochthonous back muscles, iliopsoas and the three gluteal muscles, both sides."""
    parts = []
    for side, tag in ((1, "right"), (-1, "left")):
        back = p.path(
            [
                (side * 32, -92, -40),
                (side * 30, -98, 150),
                (side * 28, -105, 330),
                (side * 24, -80, 470),
            ],
            f"autochthon_{tag}",
        )
        parts.append(
            Part(
                f"autochthon_{tag}",
                Tube(back, [p.mm(18), p.mm(24), p.mm(16), p.mm(11)]),
                52.0,
                ORGAN,
            )
        )
        psoas = p.path(
            [
                (side * 28, -28, 175),
                (side * 48, -18, 60),
                (side * 72, 22, -60),
                (side * 84, 30, -140),
                (side * 100, 15, -185),
            ],
            f"iliopsoas_{tag}",
        )
        parts.append(
            Part(
                f"iliopsoas_{tag}",
                Tube(psoas, [p.mm(8), p.mm(18), p.mm(22), p.mm(16), p.mm(10)]),
                52.0,
                ORGAN,
            )
        )
        iliacus = Ellipsoid(
            p.at(side * 82, -5, 5, f"iliopsoas_{tag}"),
            p.radii(22, 14, 42),
            rotation(y_deg=-side * 25),
        )
        parts.append(Part(f"iliopsoas_{tag}", iliacus, 52.0, ORGAN))
        glutes = (
            ("gluteus_maximus", (80, -85, -140), (58, 28, 72), side * 15),
            ("gluteus_medius", (112, -50, -35), (28, 36, 48), 0),
            ("gluteus_minimus", (104, -28, -72), (15, 20, 28), 0),
        )
        for stem, (x, y, z), radii, twist in glutes:
            name = f"{stem}_{tag}"
            shape = Ellipsoid(p.at(side * x, y, z, name), p.radii(*radii), rotation(z_deg=twist))
            parts.append(Part(name, shape, 52.0, ORGAN))
    return parts
