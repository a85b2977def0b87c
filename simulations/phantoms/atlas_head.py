"""Head and neck organs-at-risk, the brain and the spinal cord."""

from __future__ import annotations

from simulations.phantoms.atlas_skeleton import spine
from simulations.phantoms.patient import DETAIL, INNER, ORGAN, Part, Patient
from simulations.phantoms.shapes import Ellipsoid, HalfSpace, Intersection, Tube


def brain_and_cord(p: Patient) -> list[Part]:
    """The brain above the skull base, the brainstem, and the cord down its canal to L1."""
    cranial = Ellipsoid(p.at(0, -15, 687, "skull", 0), p.radii(64, 82, 82, vary=0.0))
    floor = HalfSpace(p.at(0, 0, 602), (0.0, 0.0, -1.0))
    canal = [
        (lv.x, lv.y - lv.ry - p.mm(9), lv.z)
        for lv in spine(p)
        if lv.name[0] != "L" or lv.name == "L1"
    ]
    cord = [p.at(0, -18, 578), *reversed(canal)]
    return [
        Part("brain", Intersection((cranial, floor)), 35.0, ORGAN, texture=5, wobble=1),
        Part(
            "brainstem",
            Tube(p.path([(0, -12, 640), (0, -18, 578)], "brainstem", 2), [p.mm(12), p.mm(10)]),
            40.0,
            DETAIL,
        ),
        Part("body", Tube(cord, p.mm(8)), 10.0, INNER, wobble=0.5),  # cerebrospinal fluid
        Part("spinal_cord", Tube(cord, p.mm(5)), 35.0, DETAIL, wobble=0.3),
    ]


def organs_at_risk(p: Patient) -> list[Part]:
    """Eyes, lenses, optic pathway, pituitary, cochleae, glands, mouth, larynx and thyroid."""

    def blob(
        name: str,
        c: tuple[float, float, float],
        r: tuple[float, float, float],
        hu: float,
        layer: int = DETAIL,
        within: str | None = None,
        jitter: float = 2.0,
    ) -> Part:
        return p.blob(name, c, r, hu, layer, jitter=jitter, within=within, wobble=0.5)

    def tube(
        name: str, pts: list[tuple[float, float, float]], r: float, hu: float, layer: int = DETAIL
    ) -> Part:
        return p.tube(name, pts, r, hu, layer, jitter=1.5, wobble=0.3)

    parts = [
        blob("optic_chiasm", (0, 15, 624), (12, 5, 3), 35.0),
        blob("pituitary_gland", (0, 5, 614), (6, 5, 4), 60.0),
        blob("oral_cavity", (0, 48, 562), (24, 28, 12), 20.0, ORGAN),
        blob("lips", (0, 92, 562), (22, 6, 10), 40.0, ORGAN),
        tube("larynx", [(0, 28, 535), (0, 25, 495)], 17.0, 80.0, ORGAN),
        tube("larynx", [(0, 28, 535), (0, 25, 495)], 7.0, -900.0, INNER),
        blob("thyroid_gland", (17, 22, 475), (9, 9, 20), 110.0, ORGAN),
        blob("thyroid_gland", (-17, 22, 475), (9, 9, 20), 110.0, ORGAN),
        blob("thyroid_gland", (0, 30, 468), (14, 5, 5), 110.0, ORGAN),
    ]
    for side, tag in ((1, "right"), (-1, "left")):
        eye = f"eye_{tag}"
        parts += [
            blob(eye, (side * 32, 72, 630), (12, 12, 12), 15.0),
            blob(
                f"lens_{tag}", (side * 32, 82, 630), (4.5, 2.2, 4.5), 100.0, within=eye, jitter=0.0
            ),
            tube(
                f"optic_nerve_{tag}",
                [(side * 30, 60, 630), (side * 18, 35, 626), (side * 7, 18, 624)],
                2.5,
                35.0,
            ),
            blob(f"cochlea_{tag}", (side * 36, -5, 612), (4, 4, 4), 30.0, jitter=0.5),
            blob(f"parotid_gland_{tag}", (side * 50, 12, 585), (13, 20, 24), -10.0, ORGAN),
            blob(f"submandibular_gland_{tag}", (side * 33, 40, 545), (10, 14, 9), 45.0, ORGAN),
        ]
    return parts
