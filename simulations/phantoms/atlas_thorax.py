"""The thorax: lungs and their lobes, the heart and its chambers, airway, great vessels."""

from __future__ import annotations

import numpy as np

from simulations.phantoms.atlas_body import RIB_MARGIN, Body
from simulations.phantoms.patient import DETAIL, INNER, LESION, ORGAN, VESSEL, Part, Patient
from simulations.phantoms.shapes import (
    Difference,
    Ellipsoid,
    HalfSpace,
    Intersection,
    Profile,
    Shape,
    rotation,
)


def _lobes(p: Patient, body: Body) -> dict[str, Shape]:
    """Each lobe: the thoracic cavity on its side, above the diaphragm, cut by fissures."""
    cavity = Profile(body.levels, inset=body.fat + body.muscle + RIB_MARGIN + p.mm(6))
    out: dict[str, Shape] = {}
    for side, tag in ((1, "right"), (-1, "left")):
        dome = Ellipsoid(
            p.at(side * 55, -10, 180 if side > 0 else 168), p.radii(125, 155, 82, 0.05)
        )
        envelope = Ellipsoid(p.at(side * 75, -10, 318), p.radii(88, 120, 140, 0.0))
        mediastinum = HalfSpace((side * p.mm(14), 0.0, 0.0), (-side, 0.0, 0.0))
        lung = Difference(Intersection((cavity, envelope, mediastinum)), dome)
        # The oblique fissure runs from posterior-superior to anterior-inferior.
        fissure_point, fissure_normal = p.at(0, -10, 318), (0.0, 0.77, 0.64)
        front = HalfSpace(fissure_point, tuple(-v for v in fissure_normal))
        back = HalfSpace(fissure_point, fissure_normal)
        out[f"lung_lower_lobe_{tag}"] = Intersection((lung, back))
        if side < 0:
            out["lung_upper_lobe_left"] = Intersection((lung, front))
        else:
            horizontal = p.at(0, 0, 348)[2]
            out["lung_upper_lobe_right"] = Intersection(
                (lung, front, HalfSpace((0, 0, horizontal), (0, 0, -1)))
            )
            out["lung_middle_lobe_right"] = Intersection(
                (lung, front, HalfSpace((0, 0, horizontal), (0, 0, 1)))
            )
    return out


_LOBE_SEEDS = {
    "lung_upper_lobe_right": (70, 10, 385),
    "lung_middle_lobe_right": (65, 45, 315),
    "lung_lower_lobe_right": (70, -50, 290),
    "lung_upper_lobe_left": (-70, 10, 385),
    "lung_lower_lobe_left": (-70, -50, 290),
}


def lungs(p: Patient, body: Body) -> list[Part]:
    """Five lobes (air-filled parenchyma) and, in some patients, a lung tumour in one lobe."""
    parts = [
        Part(name, shape, -850.0, ORGAN, texture=30, wobble=3)
        for name, shape in _lobes(p, body).items()
    ]
    if p.has("lung_tumor"):
        rng = p.lesion_rng
        lobe = list(_LOBE_SEEDS)[int(rng.integers(len(_LOBE_SEEDS)))]
        centre = np.asarray(p.at(*_LOBE_SEEDS[lobe])) + rng.normal(0.0, 10.0, 3)
        radius = p.mm(float(rng.uniform(8, 18)))
        tumor = Ellipsoid(tuple(centre), (radius,) * 3)
        parts.append(Part("lung_tumor", tumor, 35.0, LESION, within=lobe, wobble=3))
    return parts


def heart(p: Patient) -> list[Part]:
    """The heart with its four chambers, left atrial appendage and left ventricular wall."""
    tilt = rotation(z_deg=-30, x_deg=15)

    def blob(x: float, y: float, z: float, r: tuple[float, float, float]) -> Ellipsoid:
        return Ellipsoid(p.at(x, y, z, "heart"), p.radii(*r), tilt)

    return [
        Part("heart", blob(-15, 32, 300, (62, 50, 58)), 70.0, ORGAN, wobble=2),
        Part("heart_ventricle_right", blob(8, 58, 290, (32, 18, 32)), 165.0, INNER, within="heart"),
        Part("heart_atrium_right", blob(35, 22, 322, (24, 24, 26)), 150.0, INNER, within="heart"),
        Part("heart_atrium_left", blob(-10, -5, 328, (30, 18, 20)), 190.0, INNER, within="heart"),
        Part(
            "atrial_appendage_left", blob(-48, 22, 340, (10, 7, 10)), 185.0, INNER, within="heart"
        ),
        Part("heart_myocardium", blob(-35, 35, 285, (36, 35, 48)), 105.0, INNER, within="heart"),
        Part(
            "heart_ventricle_left",
            blob(-35, 35, 285, (24, 24, 37)),
            205.0,
            DETAIL,
            within="heart_myocardium",
        ),
    ]


def airway_and_vessels(p: Patient) -> list[Part]:
    """Trachea, esophagus, aorta and its branches, venae cavae, pulmonary vessels."""

    def tube(
        name: str,
        pts: list[tuple[float, float, float]],
        r: float | list[float],
        hu: float,
        layer: int = VESSEL,
    ) -> Part:
        return p.tube(name, pts, r, hu, layer, jitter=3.0, wobble=0.5)

    parts = [
        tube("trachea", [(0, 22, 495), (0, 10, 430), (0, -5, 380)], 9.0, -1000.0, ORGAN),
        tube(
            "esophagus",
            [
                (0, 12, 500),
                (-2, -20, 450),
                (-5, -35, 380),
                (-8, -38, 300),
                (-20, -20, 240),
                (-40, 5, 225),
            ],
            8.0,
            40.0,
            ORGAN,
        ),
        tube(
            "aorta",
            [
                (-25, 45, 318),
                (-5, 50, 360),
                (0, 35, 400),
                (-20, 0, 405),
                (-25, -35, 370),
                (-22, -45, 300),
                (-15, -30, 200),
                (-8, -15, 100),
                (0, -5, 55),
            ],
            [14, 14, 13, 12, 11, 11, 10, 9, 9],
            250.0,
        ),
        tube("brachiocephalic_trunk", [(5, 38, 405), (20, 32, 435)], 6.0, 250.0),
        tube("subclavian_artery_right", [(20, 32, 435), (55, 15, 445), (150, 0, 440)], 4.5, 250.0),
        tube(
            "common_carotid_artery_right", [(20, 32, 435), (24, 22, 480), (28, 18, 570)], 4.0, 250.0
        ),
        tube(
            "common_carotid_artery_left",
            [(-5, 30, 410), (-22, 22, 480), (-28, 18, 570)],
            4.0,
            250.0,
        ),
        tube("subclavian_artery_left", [(-15, 5, 410), (-50, 10, 440), (-150, 0, 440)], 4.5, 250.0),
        tube(
            "brachiocephalic_vein_left", [(-60, 25, 440), (-15, 45, 420), (15, 42, 405)], 6.0, 150.0
        ),
        tube("brachiocephalic_vein_right", [(55, 25, 445), (18, 42, 410)], 6.0, 150.0),
        tube("superior_vena_cava", [(18, 42, 405), (30, 30, 345)], 9.0, 150.0),
        tube(
            "inferior_vena_cava",
            [(30, 20, 300), (25, -15, 240), (22, -20, 120), (15, -15, 60)],
            11.0,
            150.0,
        ),
        tube("pulmonary_artery", [(5, 62, 320), (0, 50, 355), (-45, 10, 360)], 12.0, 200.0),
        tube("pulmonary_artery", [(0, 50, 355), (40, 15, 355)], 11.0, 200.0),
    ]
    for x in (45, -45):
        for z in (345, 315):
            parts.append(tube("pulmonary_vein", [(-10, -5, 330), (x, -8, z)], 5.0, 190.0))
    return parts
