"""Pictures of the cases the merge fails: the CT, the merged labels, the best decoder's.

A structure fails in a case when the merge scores it more than :data:`FAILING` Dice below
the best decoder alone. The picture is a coronal slice (through the middle of what the
best decoder finds) of the preprocessed CT, then the merged label map and the best
decoder's, each in the vocabulary's colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from core.label_files import structure_color
from core.scores import ScoreSums

FAILING = 0.05  # Dice below the best decoder alone that makes a structure fail in a case


def failing(scores: Mapping[str, ScoreSums], merged: str, alone: str) -> list[tuple[str, str]]:
    """``(structure, best decoder's method)`` of each structure the merge fails in a case.

    Args:
        scores: one case's scores by method.
        merged: the merge's method name.
        alone: the prefix of a decoder-alone method.
    """
    out = []
    for structure, got in scores[merged].means("dice").items():
        if got is None:
            continue
        best = max(
            ((m, s.means("dice").get(structure)) for m, s in scores.items() if m.startswith(alone)),
            key=lambda pair: -1.0 if pair[1] is None else pair[1],
            default=(None, None),
        )
        if best[1] is not None and best[0] is not None and best[1] - got > FAILING:
            out.append((structure, best[0]))
    return out


def _colours(labels: NDArray[np.integer], structures: Sequence[str]) -> NDArray[np.float64]:
    """RGB of a 2D label map (background black)."""
    table = np.zeros((len(structures) + 1, 3))
    for i, name in enumerate(structures, 1):
        table[i] = np.asarray(structure_color(name)) / 255.0
    return np.asarray(table[labels])


def save_picture(
    path: Path,
    image: torch.Tensor,
    panels: Sequence[tuple[str, torch.Tensor, Sequence[str]]],
    focus: torch.Tensor,
) -> Path:
    """Write the CT and each ``(title, labels (X, Y, Z), structures)`` panel side by side.

    The coronal slice goes through the middle of ``focus`` (a boolean map; the volume's
    middle where it is empty).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ys = torch.nonzero(focus)[:, 1] if bool(focus.any()) else torch.tensor([focus.shape[1] // 2])
    y = int(ys.float().median())
    figure, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)), 4))
    axes[0].imshow(image[:, y, :].T.numpy(), cmap="gray", origin="lower")
    axes[0].set_title("CT (coronal)")
    for axis, (title, labels, structures) in zip(axes[1:], panels, strict=True):
        axis.imshow(_colours(labels[:, y, :].T.numpy(), structures), origin="lower")
        axis.set_title(title)
    for axis in axes:
        axis.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return path
