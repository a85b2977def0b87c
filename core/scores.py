"""Scores per structure: the sums a site reports and a task's mean.

Kept apart from the loops (:mod:`core.local.evaluation`) and free of torch, so that the
reports and the command line can read scores without loading a network library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def task_mean(scores: Mapping[str, float | None]) -> float | None:
    """A task's mean score, as every report states it: the mean over its scored structures.

    A structure that no held-out case holds has no score (``None``) and is skipped, not
    counted as 0, so a task is not marked down for a structure its test set lacks.

    Returns:
        The mean, or ``None`` when no structure was scored.
    """
    values = [float(v) for v in scores.values() if v is not None]
    return float(np.mean(values)) if values else None


RATIOS = ("dice", "precision", "recall")
"""Per-structure scores in [0, 1]."""
METRICS = (*RATIOS, "hd95")
"""Every per-structure score a site sums (HD95 in mm)."""


@dataclass
class ScoreSums:
    """Per structure: sum and count of each of :data:`METRICS` over the cases where defined.

    Dice and HD95 where the structure is in the case or the prediction; precision where
    the prediction holds it (how often a voxel called the structure is it); recall where
    the case holds it (how much of it is found).
    """

    dice: dict[str, list[float]] = field(default_factory=dict)
    hd95: dict[str, list[float]] = field(default_factory=dict)
    precision: dict[str, list[float]] = field(default_factory=dict)
    recall: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metric: str, structure: str, value: float) -> None:
        """Add one case's value (NaN values are skipped: the structure was absent)."""
        if np.isfinite(value):
            pair = getattr(self, metric).setdefault(structure, [0.0, 0.0])
            pair[0] += float(value)
            pair[1] += 1.0

    def merge(self, other: ScoreSums) -> ScoreSums:
        """Pool another site's sums into these."""
        for metric in METRICS:
            for structure, (total, n) in getattr(other, metric).items():
                pair = getattr(self, metric).setdefault(structure, [0.0, 0.0])
                pair[0] += total
                pair[1] += n
        return self

    def means(self, metric: str = "dice") -> dict[str, float | None]:
        """Mean per structure (``None`` where no case had it)."""
        return {s: (t / n if n else None) for s, (t, n) in getattr(self, metric).items()}

    def to_flat(self) -> dict[str, float]:
        """Flat ``metric-sum/structure`` and ``metric-n/structure`` entries (a MetricRecord)."""
        out = {}
        for metric in METRICS:
            for structure, (total, n) in getattr(self, metric).items():
                out[f"{metric}-sum/{structure}"] = total
                out[f"{metric}-n/{structure}"] = n
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, float]) -> ScoreSums:
        """Rebuild from :meth:`to_flat` (other keys are ignored)."""
        out = cls()
        for key, value in flat.items():
            if "-sum/" in key:
                metric, structure = key.split("-sum/", 1)
                n = flat.get(f"{metric}-n/{structure}", 0.0)
                if metric in METRICS:
                    getattr(out, metric)[structure] = [float(value), float(n)]
        return out
