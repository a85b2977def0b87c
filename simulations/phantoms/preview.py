"""A preview PNG of a CT with its labels: axial, coronal and sagittal slices and a legend.

Slices follow the radiological convention: the patient's right on the viewer's left,
anterior up in the axial view, superior up in the others; aspect ratios are physical.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from core.io import atomic_write_bytes
from core.label_files import structure_color

WINDOW = (-160.0, 240.0)  # soft-tissue window: level 40, width 400


def _busiest(label: NDArray[np.generic], axis: int) -> int:
    """The slice along ``axis`` that shows the most distinct structures (then most voxels)."""
    lab = np.moveaxis(np.asarray(label, dtype=np.int64), axis, 0)
    scores = [(len(np.unique(s)) - 1, int(np.count_nonzero(s))) for s in lab]
    return int(max(range(len(scores)), key=lambda k: scores[k]))


def write_preview(
    path: str | Path,
    image: NDArray[np.generic],
    label: NDArray[np.generic],
    affine: NDArray[np.floating],
    structures: Sequence[str],
    title: str = "",
) -> Path:
    """Render and atomically write the preview PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    sx, sy, sz = (float(v) for v in np.abs(np.diag(affine)[:3]))
    nx, ny, nz = image.shape
    ci, cj, ck = (_busiest(label, axis) for axis in range(3))
    colors = np.array([(0, 0, 0)] + [structure_color(s) for s in structures], float) / 255
    cmap = ListedColormap(colors)
    views = [
        ("axial", image[::-1, :, ck].T, label[::-1, :, ck].T, (0, nx * sx, 0, ny * sy)),
        ("coronal", image[::-1, cj, :].T, label[::-1, cj, :].T, (0, nx * sx, 0, nz * sz)),
        ("sagittal", image[ci, ::-1, :].T, label[ci, ::-1, :].T, (0, ny * sy, 0, nz * sz)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 5), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for ax, (name, ct, lab, extent) in zip(axes[:3], views, strict=True):
        ax.imshow(ct, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower", extent=extent)
        overlay = np.ma.masked_equal(lab, 0)
        ax.imshow(
            overlay,
            cmap=cmap,
            vmin=0,
            vmax=len(structures),
            alpha=0.45,
            origin="lower",
            extent=extent,
            interpolation="nearest",
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    present = set(np.unique(label).tolist())
    handles = [Patch(color=colors[i], label=s) for i, s in enumerate(structures, 1) if i in present]
    axes[3].axis("off")
    axes[3].legend(
        handles=handles,
        loc="upper left",
        fontsize=6 if len(handles) > 40 else 8,
        ncol=1 + len(handles) // 40,
        frameon=False,
    )
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
