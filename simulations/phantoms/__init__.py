"""Synthetic whole-body CT phantoms with labels on the anatomy vocabulary."""

from simulations.phantoms.generate import (
    LESIONS,
    REGIONS,
    PhantomCase,
    Scanner,
    drawable_structures,
    make_case,
)

__all__ = ["LESIONS", "REGIONS", "PhantomCase", "Scanner", "drawable_structures", "make_case"]
