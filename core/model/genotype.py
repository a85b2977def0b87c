"""A decoder architecture as plain JSON: per upsampling stage an operation and a width.

Like nnU-Net's plans, a genotype is data: a decoder is rebuilt from it and its label list
alone. Stages run from the deepest (just above the bottleneck) to full resolution; a
stage's width is its encoder level's width times the multiplier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.model.blocks import OPS

WIDTH_CHOICES = (1.0, 0.5, 0.25)


@dataclass(frozen=True)
class Stage:
    """One decoder stage: operation (``3d``, ``p3d`` or ``2d``) and width multiplier."""

    op: str
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"genotype: op {self.op!r} is not one of {', '.join(OPS)}")
        if not 0.0 < self.width <= 1.0:
            raise ValueError(f"genotype: width {self.width} must be in (0, 1]")


@dataclass(frozen=True)
class Genotype:
    """A decoder architecture; build one with :meth:`teacher`, :meth:`uniform` or JSON."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("genotype: needs at least one stage")

    @classmethod
    def teacher(cls, n_stages: int) -> Genotype:
        """The full-width 3D decoder."""
        return cls.uniform("3d", 1.0, n_stages)

    @classmethod
    def uniform(cls, op: str, width: float, n_stages: int) -> Genotype:
        """The same operation and width at every stage."""
        return cls(tuple(Stage(op, width) for _ in range(n_stages)))

    def widths(self, encoder_widths: Sequence[int]) -> list[int]:
        """Channel widths of the stages, given the encoder's level widths.

        Raises:
            ValueError: if the genotype does not fit an encoder of this depth.
        """
        if len(self.stages) != len(encoder_widths) - 1:
            raise ValueError(
                f"genotype has {len(self.stages)} stages; an encoder with "
                f"{len(encoder_widths)} levels needs {len(encoder_widths) - 1}"
            )
        skips = list(reversed(encoder_widths[:-1]))
        return [max(4, round(w * s.width)) for w, s in zip(skips, self.stages, strict=True)]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"stages": [{"op": s.op, "width": s.width} for s in self.stages]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Genotype:
        """Rebuild from :meth:`to_json`.

        Raises:
            ValueError: naming the field that is missing or wrong.
        """
        stages = obj.get("stages") if isinstance(obj, Mapping) else None
        if not isinstance(stages, list):
            raise ValueError('genotype: expected {"stages": [{"op": ..., "width": ...}, ...]}')
        out = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, Mapping) or "op" not in stage:
                raise ValueError(f"genotype: stages[{i}] needs an 'op'")
            out.append(Stage(str(stage["op"]), float(stage.get("width", 1.0))))
        return cls(tuple(out))

    def __str__(self) -> str:
        return " ".join(f"{s.op}@{s.width:g}" for s in self.stages)
