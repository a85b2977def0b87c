"""The skeleton: vertebrae, sacrum, ribs and cartilages, sternum, shoulder girdle, pelvis, skull."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulations.phantoms.patient import BONE, DETAIL, Part, Patient
from simulations.phantoms.shapes import Difference, Ellipsoid, Tube, rotation

# Level heights (mm, disc included) from L5 up to C1; z = 0 is the L5/S1 disc.
_HEIGHTS = (
    [("L5", 35), ("L4", 35), ("L3", 34), ("L2", 33), ("L1", 32)]
    + [
        (f"T{i}", h)
        for i, h in zip(
            range(12, 0, -1), (28, 27, 26, 25, 24, 23, 23, 22, 22, 21, 21, 20), strict=True
        )
    ]
    + [("C7", 17), ("C6", 16), ("C5", 16), ("C4", 16), ("C3", 16), ("C2", 24), ("C1", 12)]
)
# Where the vertebral bodies sit front to back (lordosis and kyphosis), by z.
_SPINE_Y = ((0, -40), (100, -35), (170, -48), (330, -70), (450, -55), (475, -38), (570, -25))
SKULL_BASE_Z = 578.0
HIP_JOINT = (88.0, 5.0, -105.0)  # right femoral head centre; the left mirrors it


@dataclass(frozen=True)
class Level:
    """One vertebral level of a patient: centre, height and body size (mm)."""

    name: str
    x: float
    y: float
    z: float
    height: float
    rx: float
    ry: float


def spine(p: Patient) -> list[Level]:
    """Vertebral levels from L5 up to C1, scaled to the patient."""
    levels, z = [], 0.0
    zs, ys = zip(*_SPINE_Y, strict=True)
    for name, h in _HEIGHTS:
        centre = z + h / 2
        width = (
            25.0
            if name[0] == "L"
            else 12.0
            if name[0] == "C"
            else 17.0 + (12 - int(name[1:])) * 0.6
        )
        x, y, zz = p.at(0.0, float(np.interp(centre, zs, ys)), centre)
        levels.append(Level(name, x, y, zz, h * p.sz, p.mm(width), p.mm(width * 0.72)))
        z += h
    return levels


def spine_y(z: float) -> float:
    """Standard-patient y of the vertebral bodies at height z."""
    zs, ys = zip(*_SPINE_Y, strict=True)
    return float(np.interp(z, zs, ys))


def vertebrae(p: Patient) -> list[Part]:
    """Each vertebra: a body, an arch around the canal, a spinous and two transverse processes."""
    parts = []
    for lv in spine(p):
        name = f"vertebra_{lv.name}"
        h = lv.height * 0.78 / 2
        canal_y = lv.y - lv.ry - p.mm(9)
        arch_r = p.mm(4.5 if lv.name[0] != "L" else 6)
        body = Ellipsoid((lv.x, lv.y, lv.z), (lv.rx, lv.ry, h))
        arch = Tube(
            [
                (lv.x - lv.rx * 0.6, lv.y - lv.ry * 0.7, lv.z),
                (lv.x - p.mm(11), canal_y - p.mm(4), lv.z),
                (lv.x, canal_y - p.mm(11), lv.z),
                (lv.x + p.mm(11), canal_y - p.mm(4), lv.z),
                (lv.x + lv.rx * 0.6, lv.y - lv.ry * 0.7, lv.z),
            ],
            arch_r,
        )
        spinous = Tube(
            [(lv.x, canal_y - p.mm(11), lv.z), (lv.x, canal_y - p.mm(35), lv.z - h)], arch_r
        )
        transverse = Tube(
            [
                (lv.x - p.mm(32), canal_y, lv.z),
                (lv.x, canal_y - p.mm(2), lv.z),
                (lv.x + p.mm(32), canal_y, lv.z),
            ],
            arch_r * 0.8,
        )
        parts += [
            Part(name, s, hu, BONE, wobble=0.5)
            for s, hu in ((body, 330.0), (arch, 600.0), (spinous, 600.0), (transverse, 550.0))
        ]
    s1 = spine(p)[0]
    sacrum = Ellipsoid(p.at(0, -62, -55), p.radii(44, 24, 60), rotation(x_deg=-25))
    parts.append(Part("sacrum", sacrum, 380.0, BONE, wobble=1.0))
    parts.append(
        Part(
            "vertebra_S1",
            Ellipsoid((s1.x, s1.y - p.mm(8), p.at(0, 0, -14)[2]), (s1.rx * 1.1, s1.ry, p.mm(12))),
            380.0,
            DETAIL,
            wobble=0.5,
        )
    )
    return parts


Cavity = Callable[[float], tuple[float, float, float]]


def rib_path(
    p: Patient, side: int, i: int, levels: dict[str, Level], cavity: Cavity
) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """Points of rib ``i`` (1..12) on one side (+1 right, -1 left) and of its cartilage.

    A rib leaves its thoracic vertebra, runs around the cavity wall and drops as it
    goes forward; ribs 1-10 reach the sternum through a cartilage, 11-12 float.
    """
    lv = levels[f"T{i}"]
    end_deg = {1: 150, 2: 158, 11: 105, 12: 85}.get(i, 165 if i <= 7 else 150)
    shrink = {1: 0.6, 2: 0.78, 3: 0.9}.get(i, 1.0)
    drop = p.mm(15 + 6 * min(i, 8))
    pts = [(lv.x + side * (lv.rx + p.mm(4)), lv.y - lv.ry * 0.4, lv.z)]
    for k, t in enumerate(np.radians(np.linspace(25, end_deg, 9))):
        z = lv.z - drop * k / 8
        a, b, cy = cavity(z)
        pts.append(
            (
                lv.x + side * (a + p.mm(5)) * shrink * np.sin(t),
                cy - (b + p.mm(5)) * shrink * np.cos(t),
                z,
            )
        )
    cartilage: list[tuple[float, float, float]] = []
    if i <= 10:
        sternal_z = p.at(0, 0, 420 - 22 * min(i, 7))[2]
        a, b, cy = cavity(sternal_z)
        cartilage = [pts[-1], (side * p.mm(14), cy + b + p.mm(4), sternal_z)]
    return pts, cartilage


def thoracic_cage(p: Patient, cavity: Cavity) -> list[Part]:
    """Ribs, costal cartilages, sternum, clavicles and scapulae around the thoracic cavity."""
    levels = {lv.name: lv for lv in spine(p)}
    parts = []
    for side, tag in ((1, "right"), (-1, "left")):
        for i in range(1, 13):
            pts, cart = rib_path(p, side, i, levels, cavity)
            parts.append(Part(f"rib_{tag}_{i}", Tube(pts, p.mm(4.5)), 520.0, BONE, wobble=0.3))
            if cart:
                parts.append(
                    Part("costal_cartilages", Tube(cart, p.mm(4.5)), 140.0, BONE, wobble=0.3)
                )
        clav = p.path(
            [(side * 18, 88, 425), (side * 80, 75, 432), (side * 150, 5, 445)], f"clavicle_{tag}", 3
        )
        parts.append(Part(f"clavicle_{tag}", Tube(clav, p.mm(7)), 600.0, BONE, wobble=0.5))
        blade = Ellipsoid(
            p.at(side * 100, -100, 360, f"scapula_{tag}"),
            p.radii(48, 8, 70),
            rotation(z_deg=-side * 30),
        )
        glenoid = Tube(
            p.path([(side * 125, -85, 415), (side * 155, -40, 425)], f"scapula_{tag}", 0), p.mm(11)
        )
        parts += [
            Part(f"scapula_{tag}", blade, 420.0, BONE),
            Part(f"scapula_{tag}", glenoid, 500.0, BONE),
        ]
    _, b, cy = cavity(p.at(0, 0, 335)[2])
    sternum = Ellipsoid(
        (0.0, cy + b + p.mm(9), p.at(0, 0, 335)[2]), p.radii(16, 7, 80), rotation(x_deg=12)
    )
    parts.append(Part("sternum", sternum, 420.0, BONE, wobble=0.5))
    return parts


def limbs_and_pelvis(p: Patient) -> list[Part]:
    """Humeri (arms at the sides), hip bones and proximal femurs."""
    parts = []
    for side, tag in ((1, "right"), (-1, "left")):
        arm = p.path(
            [(side * 170, -40, 420), (side * 205, -30, 350), (side * 215, -20, 150)],
            f"humerus_{tag}",
            3,
        )
        humerus = Tube(arm, [p.mm(22), p.mm(11), p.mm(12)])
        parts.append(Part(f"humerus_{tag}", humerus, 550.0, BONE, wobble=0.5))
        hx, hy, hz = HIP_JOINT
        head = p.at(side * hx, hy, hz)
        ilium = Ellipsoid(
            p.at(side * 100, -35, 5, f"hip_{tag}"), p.radii(14, 62, 58), rotation(y_deg=-side * 28)
        )
        socket = Ellipsoid(head, (p.mm(33),) * 3)
        pubis = Tube([head, p.at(side * 45, 65, -135), p.at(side * 6, 70, -140)], p.mm(9))
        ischium = Tube([head, p.at(side * 62, -25, -175)], p.mm(12))
        parts += [
            Part(f"hip_{tag}", s, 450.0, BONE, wobble=0.5) for s in (ilium, socket, pubis, ischium)
        ]
        femur = Tube(
            [
                head,
                p.at(side * 128, -5, -140),
                p.at(side * 118, 5, -260),
                p.at(side * 112, 10, -480),
            ],
            [p.mm(25), p.mm(18), p.mm(15), p.mm(15)],
        )
        parts.append(Part(f"femur_{tag}", femur, 600.0, DETAIL, wobble=0.5))
    return parts


def skull_and_mandible(p: Patient) -> list[Part]:
    """Cranium, maxilla, skull base, petrous bones and the mandible.

    The cranium is a shell behind and above the orbits; the petrous bones are dense
    spheres around the cochleae.
    """
    outer = Ellipsoid(p.at(0, -15, 685, "skull", 0), p.radii(74, 92, 92, vary=0.04))
    inner = Ellipsoid(p.at(0, -15, 687, "skull", 0), p.radii(66, 84, 84, vary=0.0))
    maxilla = Ellipsoid(p.at(0, 52, 585, "skull", 0), p.radii(36, 24, 18))
    sinus = Ellipsoid(p.at(0, 50, 590, "skull", 0), p.radii(28, 17, 12))
    base = Ellipsoid(p.at(0, -5, 600, "skull", 0), p.radii(50, 50, 6))
    parts = [
        Part("skull", Difference(outer, inner), 900.0, BONE, wobble=0.8),
        Part("skull", Difference(maxilla, sinus), 500.0, BONE, wobble=0.5),
        Part("skull", base, 700.0, BONE, wobble=0.5),
    ]
    for side in (1, -1):
        petrous = Ellipsoid(p.at(side * 36, -5, 612, "skull", 0), (p.mm(15),) * 3)
        parts.append(Part("skull", petrous, 1200.0, BONE))
    jaw = p.path(
        [
            (-50, 15, 600),
            (-46, 20, 555),
            (-25, 62, 540),
            (0, 72, 538),
            (25, 62, 540),
            (46, 20, 555),
            (50, 15, 600),
        ],
        "mandible",
        3,
    )
    parts.append(Part("mandible", Tube(jaw, p.mm(8)), 800.0, BONE, wobble=0.5))
    return parts
