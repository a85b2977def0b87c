"""Sliding windows streamed along z, and the body's box: prediction in bounded memory.

MONAI's ``sliding_window_inference`` keeps every output channel of the whole volume
until the last window; with 150 structures over a whole-body CT that is tens of GB.
:func:`stream_windows` places the windows exactly as MONAI does (its own grid helpers)
and blends them the same way (the mean of the overlapping windows), but visits them
layer by layer along z and hands each range of slices on as soon as no later window
covers it: only about one window's depth of blended outputs is held at a time.

:func:`body_box` finds the patient (HU threshold, largest connected component); windows
that do not reach it are skipped, so the air around it never runs through the network,
while every window that does runs where the whole-volume pass puts it (the body's voxels
get exactly the whole-volume values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from numpy.typing import NDArray
from scipy import ndimage
from tqdm import tqdm

Box = tuple[slice, slice, slice]
Predictor = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Sink = Callable[[int, int, dict[str, torch.Tensor]], None]
BODY_HU = -500.0  # tissue is denser; air (and the lungs' inside) lies below
SINK_SLICES = 8  # blended slices divided at a time (bounds the temporaries)


def body_box(tissue: NDArray[np.bool_], margin: int) -> Box | None:
    """The box around the largest connected component of ``tissue``, widened by ``margin``.

    Returns:
        Slices into the volume, or ``None`` where nothing is tissue.
    """
    components, n = ndimage.label(tissue)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    found = ndimage.find_objects(components)[int(np.argmax(sizes)) - 1]
    assert found is not None
    return tuple(  # type: ignore[return-value]
        slice(max(s.start - margin, 0), min(s.stop + margin, n_d))
        for s, n_d in zip(found, tissue.shape, strict=True)
    )


def count_windows(
    shape: Sequence[int], roi: Sequence[int], overlap: float, keep: Box | None = None
) -> int:
    """How many windows :func:`stream_windows` runs over a volume of ``shape``."""
    size = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    lows = [(n - s) // 2 for s, n in zip(shape, size, strict=True)]
    windows = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3))
    return sum(1 for w in windows if keep is None or _reaches(w, keep, lows))


def stream_windows(
    image: torch.Tensor,
    roi: Sequence[int],
    overlap: float,
    predictor: Predictor,
    sink: Sink,
    progress: tqdm[None] | None = None,
    keep: Box | None = None,
) -> None:
    """Blend sliding-window outputs as MONAI does, handing them on slice range by range.

    Args:
        image: ``(1, C, X, Y, Z)``.
        roi: the window size.
        overlap: the windows' overlap (as MONAI's, in [0, 1)).
        predictor: a window's outputs, each ``(1, channels, *roi)``.
        sink: called with ``(z0, z1, blended)`` for consecutive ranges that cover
            ``0..Z``: each output, ``(1, channels, X, Y, z1 - z0)``.
        progress: a bar advanced by one per window.
        keep: run only the windows that reach this box (unpadded coordinates); outside
            it the values handed on are meaningless (callers keep only the box).
    """
    shape = tuple(image.shape[2:])
    pad = [max(r - s, 0) for s, r in zip(shape, roi, strict=True)]
    lows = [p // 2 for p in pad]
    # F.pad takes the last axis first; MONAI pads symmetrically with zeros like this
    sides = zip(pad[::-1], lows[::-1], strict=True)
    padded = F.pad(image, [v for p, lo in sides for v in (lo, p - lo)])
    size = tuple(padded.shape[2:])
    windows = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3))
    if keep is not None:
        windows = [w for w in windows if _reaches(w, keep, lows)]
    starts = sorted({w[2].start for w in windows})
    inner = (slice(lows[0], lows[0] + shape[0]), slice(lows[1], lows[1] + shape[1]))
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((1, 1, *size[:2], 0))
    base = 0  # the z of the first slice still held
    for j, z0 in enumerate(starts):
        grow = z0 + roi[2] - base - count.shape[-1]
        if grow > 0:
            count = _extend(count, grow)
            sums = {k: _extend(v, grow) for k, v in sums.items()}
        for w in (w for w in windows if w[2].start == z0):
            held = (slice(None), slice(None), w[0], w[1], slice(z0 - base, z0 + roi[2] - base))
            for key, out in predictor(padded[(slice(None), slice(None), *w)]).items():
                if key not in sums:
                    sums[key] = torch.zeros((1, out.shape[1], *count.shape[2:]))
                sums[key][held] += out.float()
            count[held] += 1.0
            if progress is not None:
                progress.update()
        done = starts[j + 1] if j + 1 < len(starts) else size[2]
        _hand_on(sums, count, base, done, (inner[0], inner[1], lows[2], shape[2]), sink)
        n = done - base
        sums = {k: v[..., n:].clone() for k, v in sums.items()}
        count = count[..., n:].clone()
        base = done


def _reaches(window: Sequence[slice], box: Box, lows: Sequence[int]) -> bool:
    """Whether a window (padded coordinates) overlaps ``box`` (unpadded coordinates)."""
    return all(
        w.start < b.stop + low and b.start + low < w.stop
        for w, b, low in zip(window, box, lows, strict=True)
    )


def _extend(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros((*t.shape[:-1], n))], dim=-1)


def _hand_on(
    sums: dict[str, torch.Tensor],
    count: torch.Tensor,
    base: int,
    done: int,
    crop: tuple[slice, slice, int, int],
    sink: Sink,
) -> None:
    """Hand slices ``base..done`` (padded z) on as means, without the padding."""
    xs, ys, low, depth = crop
    lo, hi = max(base, low), min(done, low + depth)
    for z in range(lo, hi, SINK_SLICES):
        z1 = min(z + SINK_SLICES, hi)
        part = (slice(None), slice(None), xs, ys, slice(z - base, z1 - base))
        seen = count[part].clamp(min=1.0)  # 0 only where no window ran (outside ``keep``)
        sink(z - low, z1 - low, {k: v[part] / seen for k, v in sums.items()})
