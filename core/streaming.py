"""Sliding windows streamed along z, and the body's box: prediction in bounded memory.

MONAI's ``sliding_window_inference`` keeps every output channel of the whole volume
until the last window; with 150 structures over a whole-body CT that is tens of GB.
:func:`stream_windows` places the windows exactly as MONAI does (its own grid helpers)
and blends them the same way (the mean of the overlapping windows), but visits them
layer by layer along z and hands each range of slices on as soon as no later window
covers it: one window's depth of blended outputs is held, in buffers made once and
shifted in place, and a predictor may hand its outputs over one at a time.

:func:`body_box` finds the patient (HU threshold, largest connected component); windows
that do not reach it are skipped, so the air around it never runs through the network,
while every window that does runs where the whole-volume pass puts it (the body's voxels
get exactly the whole-volume values); only the box's columns are blended and held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import EllipsisType

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from numpy.typing import NDArray
from scipy import ndimage
from tqdm import tqdm

Box = tuple[slice, slice, slice]
Index = tuple[slice | EllipsisType, ...]  # into (1, channels, x, y, z) tensors
Predictor = Callable[[torch.Tensor], Iterable[tuple[str, torch.Tensor]]]
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
        predictor: a window's outputs as ``(name, (1, channels, *roi))`` pairs; each is
            blended before the next is asked for, so a predictor that computes them one
            after another (a generator) holds only one at a time.
        sink: called with ``(z0, z1, blended)`` for consecutive ranges that cover the
            slices the windows run over (``0..Z`` without ``keep``): each output
            ``(1, channels, x, y, z1 - z0)``, where ``x, y`` are ``keep``'s ranges (the
            whole ``X, Y`` without it).
        progress: a bar advanced by one per window.
        keep: run only the windows that reach this box (unpadded coordinates) and blend
            only inside its ``x, y`` ranges; values handed on for slices outside its ``z``
            range are meaningless (callers keep only the box).
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
    if not starts:
        return
    # what is blended: the box's x, y ranges (the volume's without one), padded coordinates
    xy = keep[:2] if keep is not None else (slice(0, shape[0]), slice(0, shape[1]))
    region = [slice(low + r.start, low + r.stop) for low, r in zip(lows[:2], xy, strict=True)]
    held = (*(r.stop - r.start for r in region), roi[2])  # one window's depth of slices
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((1, 1, *held))
    for j, z0 in enumerate(starts):  # z0: the first slice held
        for w in (w for w in windows if w[2].start == z0):
            into, out_of = _meet(w, region)
            for key, out in predictor(padded[(slice(None), slice(None), *w)]):
                if key not in sums:
                    sums[key] = torch.zeros((1, out.shape[1], *held))
                sums[key][into] += out[out_of].float()
                del out  # before the predictor makes the next output
            count[into] += 1.0
            if progress is not None:
                progress.update()
        done = starts[j + 1] if j + 1 < len(starts) else z0 + roi[2]
        _hand_on(sums, count, z0, done, (lows[2], shape[2]), sink)
        for t in (*sums.values(), count):
            _shift(t, done - z0)


def _meet(window: Sequence[slice], region: Sequence[slice]) -> tuple[Index, Index]:
    """Where a window's ``x, y`` ranges meet the blended region: in it, and in the window."""
    both = [
        slice(max(w.start, r.start), min(w.stop, r.stop))
        for w, r in zip(window[:2], region, strict=True)
    ]
    into = tuple(
        slice(b.start - r.start, b.stop - r.start) for b, r in zip(both, region, strict=True)
    )
    out_of = tuple(
        slice(b.start - w.start, b.stop - w.start) for b, w in zip(both, window[:2], strict=True)
    )
    return (..., *into, slice(None)), (..., *out_of, slice(None))


def _shift(t: torch.Tensor, n: int) -> None:
    """Move ``t``'s slices ``n`` places down its last axis in place, zeros coming in.

    In blocks of at most ``n`` slices, lowest first, so that no block overlaps its source
    and each source is read before it is overwritten: no copy of the whole buffer is made
    (one block when the windows overlap by at most half).
    """
    kept = t.shape[-1] - n
    for z in range(0, kept, n):
        k = min(n, kept - z)
        t[..., z : z + k].copy_(t[..., z + n : z + n + k])
    t[..., max(kept, 0) :].zero_()


def _reaches(window: Sequence[slice], box: Box, lows: Sequence[int]) -> bool:
    """Whether a window (padded coordinates) overlaps ``box`` (unpadded coordinates)."""
    return all(
        w.start < b.stop + low and b.start + low < w.stop
        for w, b, low in zip(window, box, lows, strict=True)
    )


def _hand_on(
    sums: dict[str, torch.Tensor],
    count: torch.Tensor,
    base: int,
    done: int,
    crop: tuple[int, int],
    sink: Sink,
) -> None:
    """Hand slices ``base..done`` (padded z) on as means, without the padding."""
    low, depth = crop
    lo, hi = max(base, low), min(done, low + depth)
    for z in range(lo, hi, SINK_SLICES):
        z1 = min(z + SINK_SLICES, hi)
        part = (..., slice(z - base, z1 - base))
        seen = count[part].clamp(min=1.0)  # 0 only where no window ran (outside ``keep``)
        sink(z - low, z1 - low, {k: v[part] / seen for k, v in sums.items()})
