"""Abdomen and pelvis: solid organs, bowel, urinary tract, vessels, and lesions in organs."""

from __future__ import annotations

import numpy as np

from simulations.phantoms.patient import INNER, LESION, VESSEL, Part, Patient
from simulations.phantoms.shapes import Ellipsoid, Tube, rotation

KIDNEY_CENTRES = {"right": (62, -45, 118), "left": (-60, -45, 134)}


def _bowel_path(p: Patient) -> list[tuple[float, float, float]]:
    """Small-bowel loops: a smooth random walk through the lower central abdomen."""
    pts, point = [], np.array([-20.0, 40.0, 120.0])
    for _ in range(14):
        pts.append(tuple(point))
        step = p.rng.normal(0.0, 1.0, 3) * np.array([40.0, 18.0, 22.0])
        point = np.clip(point + step, [-80, 5, 25], [80, 85, 130])
    return [(float(x), float(y), float(z)) for x, y, z in pts]


def organs(p: Patient) -> list[Part]:
    """Solid organs, bowel, bladder and prostate of the abdomen and pelvis."""
    parts = [
        p.blob("liver", (60, 5, 205), (85, 85, 60), 110.0, texture=8),
        p.blob("liver", (-20, 45, 220), (55, 35, 30), 110.0, texture=8),
        p.blob("gallbladder", (55, 55, 160), (14, 18, 30), 15.0, INNER, rotation(x_deg=-30)),
        p.blob("spleen", (-90, -35, 215), (30, 48, 48), 120.0),
        p.blob("stomach", (-55, 5, 225), (38, 35, 35), 35.0),
        p.blob("stomach", (-55, 5, 248), (22, 20, 10), -950.0, INNER),  # air in the fundus
        p.blob("stomach", (-40, 40, 185), (33, 32, 42), 35.0),
        p.blob("stomach", (5, 55, 165), (25, 20, 20), 40.0),
        p.tube(
            "pancreas",
            [(30, 20, 145), (5, 30, 155), (-30, 15, 165), (-75, -15, 180)],
            [16, 12, 11, 10],
            100.0,
        ),
        p.tube(
            "duodenum",
            [
                (15, 45, 165),
                (45, 30, 160),
                (50, 20, 125),
                (25, 18, 110),
                (0, 22, 115),
                (-20, 20, 135),
            ],
            11.0,
            40.0,
        ),
        p.blob("adrenal_gland_right", (35, -22, 190), (6, 12, 16), 40.0),
        p.blob("adrenal_gland_left", (-38, -20, 185), (6, 12, 16), 40.0),
        p.tube("small_bowel", _bowel_path(p), 13.0, 30.0, texture=20),
        p.tube(
            "colon",
            [
                (70, 30, 20),
                (75, 10, 140),
                (65, 25, 175),
                (20, 75, 150),
                (-40, 70, 160),
                (-75, 20, 190),
                (-80, -5, 90),
                (-60, 20, 10),
                (-30, 30, -30),
                (-10, 10, -55),
            ],
            20.0,
            -300.0,
            texture=120,
        ),
        p.tube("rectum", [(-10, 10, -55), (0, -40, -95), (0, -35, -160)], 16.0, 20.0),
        p.blob("urinary_bladder", (0, 50, -110), (40, 35, 30), 10.0),
        p.blob("prostate", (0, 25, -160), (18, 14, 16), 45.0),
    ]
    for side, tag in ((1, "right"), (-1, "left")):
        name = f"kidney_{tag}"
        tilt = rotation(x_deg=15, y_deg=side * 12)
        parts.append(p.blob(name, KIDNEY_CENTRES[tag], (28, 30, 55), 180.0, rot=tilt))
        medulla = KIDNEY_CENTRES[tag]
        parts.append(
            p.blob(
                name,
                (medulla[0] - side * 6, medulla[1], medulla[2]),
                (14, 15, 35),
                95.0,
                INNER,
                tilt,
            )
        )
    return parts


def vessels(p: Patient) -> list[Part]:
    """Portal and splenic veins, hepatic vessels (inside the liver), iliac arteries and veins."""
    parts = [
        p.tube(
            "portal_vein_and_splenic_vein",
            [(55, 15, 190), (20, 18, 160), (-40, 0, 170), (-80, -20, 195)],
            7.0,
            170.0,
            VESSEL,
        )
    ]
    for end in ((95, 20, 240), (30, -15, 250), (85, -30, 185), (-15, 40, 222)):
        parts.append(
            Part(
                "hepatic_vessel",
                Tube(p.path([(50, 15, 195), end], "liver"), [p.mm(5), p.mm(2.5)]),
                170.0,
                VESSEL,
                within="liver",
                wobble=0.5,
            )
        )
    for side, tag in ((1, "right"), (-1, "left")):
        parts.append(
            p.tube(
                f"iliac_artery_{tag}",
                [(0, -5, 55), (side * 40, 0, 5), (side * 80, 25, -85)],
                6.0,
                250.0,
                VESSEL,
            )
        )
        parts.append(
            p.tube(
                f"iliac_vena_{tag}",
                [(15, -15, 60), (side * 45, -10, 5), (side * 82, 15, -85)],
                7.0,
                150.0,
                VESSEL,
            )
        )
    return parts


def lesions(p: Patient) -> list[Part]:
    """Tumours and cysts inside their organ, for the lesions this patient carries."""
    parts = []

    def inside(
        name: str,
        organ_centre: tuple[float, float, float],
        spread: float,
        r: tuple[float, float],
        hu: float,
        organ: str,
    ) -> None:
        c = np.asarray(p.at(*organ_centre)) + p.rng.uniform(-spread, spread, 3)
        radius = p.mm(p.uniform(*r))
        parts.append(
            Part(
                name,
                Ellipsoid(tuple(c), (radius, radius * p.uniform(0.8, 1.2), radius)),
                hu,
                LESION,
                within=organ,
                wobble=2,
            )
        )

    if p.has("liver_tumor"):
        inside("liver_tumor", (60, 5, 205), 35, (10, 24), 55.0, "liver")
    if p.has("kidney_tumor"):
        tag = "right" if p.lesion_rng.random() < 0.5 else "left"
        inside("kidney_tumor", KIDNEY_CENTRES[tag], 15, (12, 20), 90.0, f"kidney_{tag}")
    for tag in ("left", "right"):
        if p.has(f"kidney_cyst_{tag}"):
            inside(f"kidney_cyst_{tag}", KIDNEY_CENTRES[tag], 15, (6, 11), 8.0, f"kidney_{tag}")
    if p.has("pancreas_tumor"):
        inside("pancreas_tumor", (20, 24, 150), 6, (10, 14), 60.0, "pancreas")
    if p.has("colon_tumor"):
        inside("colon_tumor", (75, 10, 140), 5, (12, 18), 70.0, "colon")
    return parts
