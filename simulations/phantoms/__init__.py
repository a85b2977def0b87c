"""Synthetic CT phantoms with labels on the anatomy vocabulary."""

from simulations.phantoms.torso import DEMO_STRUCTURES, make_abdomen_case, write_demo_dataset

__all__ = ["DEMO_STRUCTURES", "make_abdomen_case", "write_demo_dataset"]
