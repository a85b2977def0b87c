"""Each decoder's domain: where its sites saw each of its structures, learnt at the sites.

The merge must know where a decoder may speak without knowing the scenario or the
patient's anatomy. A body region is described, slice by slice, by the distribution of the
intensities of its axial slab (:data:`SLAB_MM` thick, the whole cross-section, air left
out): the histogram over the model's HU window, as the root of its shares (so Euclidean
distance is Hellinger's). A head slab holds skull and brain, a thoracic one lung, an
abdominal one fat and solid organs, a pelvic one large bones and bladder. HU is a
physical unit, so this holds across patients, body sizes, fields of view and scanners,
and nothing in it is an anatomical constant or a coordinate.

A decoder's output at a voxel depends on the whole window around it, not on its slab
alone: a decoder trained on abdominal CTs, whose windows always had air (padding) a little
above the diaphragm and below the iliac crest, can miss the kidneys of a trunk CT whose
windows hold a thorax and a pelvis there, although each slab looks abdominal (measured:
kidney Dice 0.03 in trunk CTs, 0.68-0.80 on the same CTs cropped to the abdomen). So a
slice's *descriptor* is its context: the slab histograms at :data:`CONTEXT_SLABS` heights
spread evenly over the decoder's window centred on it, empty where the window runs past
the CT, as the padded patches in training were.

A decoder's domain has a row for its background (every slice of its sites' CTs) and one
per structure (the slices where the site's labels hold it). For each row and each view of
a descriptor (:data:`VIEWS`: the window, the own slab) a site sends
:data:`SITE_CENTROIDS` k-means centroids and a threshold: the :data:`QUANTILE` of the
distances to the nearest centroid fitted on its other CTs (leave one CT out); a structure
its CTs never hold gets no row (threshold 0). The server joins the sites' centroids row
by row and view by view (at most :data:`TASK_CENTROIDS`, spread by farthest points) and
takes the median threshold, so one site cannot widen a domain alone.

At prediction, a decoder's *domain score* at a voxel is, in the larger of its views, the
distance of the voxel's descriptor (its window over the slabs inside the CT,
:func:`nearest_inside`) to the nearest centroid of the row of what the decoder says
there (a structure, or its background), over that row's threshold: about 1 or below
where its sites saw that structure in slabs like this one, far above elsewhere (a brain
in a pelvis, a liver in a head). A structure without a row is scored by the background's
row. The merge silences a decoder's claim where its score exceeds
``MergeSettings.domain_factor`` and weighs the rest by how near their slabs lie, in the
descriptor's own units, to what each decoder's sites saw (:func:`domain_scale`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

BINS = 32  # histogram bins over the HU window (about 60 HU each for a 2000 HU window)
SLAB_MM = 64.0  # thickness of the axial slab that describes a slice's region
SITE_CENTROIDS = 8  # per row, what a site sends
TASK_CENTROIDS = 32  # per row, what a decoder keeps
QUANTILE = 0.95  # of a site's held-out slab distances: its threshold
MIN_THRESHOLD = 1e-3  # a threshold is a distance between root histograms: 1e-3 to sqrt(2)
MAX_THRESHOLD = 2**0.5
MIN_SLABS = 4  # a row with fewer slabs has too little to describe a domain
CONTEXT_SLABS = 5  # slab histograms per descriptor, over the decoder's window
DESCRIPTOR = CONTEXT_SLABS * BINS
CONTEXT_SCALE = 1.0 / math.sqrt(CONTEXT_SLABS)  # a descriptor's norm: at most 1
OWN_SLAB = slice(BINS * (CONTEXT_SLABS // 2), BINS * (CONTEXT_SLABS // 2 + 1))
"""Where a descriptor holds the slice's own slab."""
VIEWS = (slice(0, DESCRIPTOR), OWN_SLAB)
"""What a slice is scored on, each with centroids and a threshold of its own: its whole
window, and its own slab (the window alone lets two short CTs match on the air past both
their ends, and centroids of windows blur the slabs they hold)."""
CENTROID_WIDTH = DESCRIPTOR + BINS
"""A row's centroid: each view's side by side (see :func:`view_columns`)."""


def view_columns() -> list[slice]:
    """Where each view's centroid lies in a row of :data:`CENTROID_WIDTH`."""
    out, start = [], 0
    for view in VIEWS:
        width = view.stop - view.start
        out.append(slice(start, start + width))
        start += width
    return out


def descriptors(image: torch.Tensor, spacing_z: float, window_mm: float) -> torch.Tensor:
    """``(Z, DESCRIPTOR)``: each slice's context, as its decoder's window sees it.

    The root histograms (:func:`slab_histograms`) of the slabs at :data:`CONTEXT_SLABS`
    heights from ``-window_mm / 2`` to ``+window_mm / 2`` around the slice, all 0 where
    that height lies outside the CT, scaled so that a descriptor's norm is at most 1.
    """
    slabs = slab_histograms(image, spacing_z)
    z = torch.arange(len(slabs))
    parts = []
    for offset in torch.linspace(-window_mm / 2, window_mm / 2, CONTEXT_SLABS).tolist():
        at = z + round(offset / spacing_z)
        inside = (at >= 0) & (at < len(slabs))
        part = torch.zeros_like(slabs)
        part[inside] = slabs[at[inside]]
        parts.append(part)
    return torch.cat(parts, dim=1) * CONTEXT_SCALE


def slab_histograms(image: torch.Tensor, spacing_z: float) -> torch.Tensor:
    """``(Z, BINS)``: the root histogram of each slice's slab of an ``(X, Y, Z)`` volume.

    The volume is on [0, 1] (the HU window); the lowest bin (air) is left out, so the
    patient's size and the field of view's air do not count. A slab without body is all 0.
    """
    counts = torch.stack([_histogram(image[..., z]) for z in range(image.shape[-1])])
    counts[:, 0] = 0.0  # air
    half = max(round(SLAB_MM / spacing_z / 2), 0)
    padded = F.pad(counts.T[None], (half, half))  # (1, BINS, Z + 2 half)
    slabs = F.avg_pool1d(padded, 2 * half + 1, stride=1)[0].T
    return (slabs / slabs.sum(dim=1, keepdim=True).clamp_min(1e-12)).sqrt()


def _histogram(values: torch.Tensor) -> torch.Tensor:
    """``(BINS,)`` counts of values on [0, 1] (float64)."""
    binned = (values.float().clamp(0.0, 1.0) * BINS).long().clamp_max(BINS - 1)
    return torch.bincount(binned.flatten(), minlength=BINS).double()


def nearest(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(N,)``: each row's distance to its nearest centroid."""
    return torch.cdist(rows.double(), centroids.double()).min(dim=1).values


def nearest_inside(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(N,)``: as :func:`nearest`, over the slabs each row has (its empty ones left out).

    A slab a row holds nothing of lies past its CT's end: the scan stopped there, which
    says nothing of the anatomy the decoder would have seen. Where a row has every slab
    this is :func:`nearest`.
    """
    rows, centroids = rows.double(), centroids.double()
    slabs = rows.shape[1] // BINS
    present = (rows.view(len(rows), slabs, BINS).sum(dim=2) > 0).double()
    inside = present.repeat_interleave(BINS, dim=1)  # (N, width): 1 where the row has a slab
    # |m * (r - c)|^2 = |r|^2 - 2 r.c + m.c^2, since r is 0 wherever m is
    squares = (
        (rows**2).sum(dim=1, keepdim=True) - 2 * rows @ centroids.T + inside @ (centroids**2).T
    )
    return squares.clamp_min(0.0).sqrt().min(dim=1).values


def cluster(rows: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``(k, width)`` k-means centroids of ``rows`` (its distinct rows, repeated, if few)."""
    distinct: torch.Tensor = torch.unique(rows, dim=0)
    if len(distinct) <= k:  # k-means++ cannot seed more centroids than distinct rows
        return distinct[torch.arange(k) % len(distinct)].clone()
    centroids, _ = kmeans2(rows.numpy(), k, seed=seed, minit="++")
    return torch.from_numpy(np.asarray(centroids)).double()


@dataclass(frozen=True)
class SiteDomain:
    """What a site sends, per row (background, then each structure).

    Attributes:
        centroids: ``(1 + K, SITE_CENTROIDS, CENTROID_WIDTH)``.
        thresholds: ``(1 + K, len(VIEWS))`` held out, per view (0: no row).
    """

    centroids: torch.Tensor
    thresholds: torch.Tensor

    @classmethod
    def empty(cls, structures: int) -> SiteDomain:
        """A domain without a row (every threshold 0), for a decoder of ``structures``."""
        rows = 1 + structures
        return cls(torch.zeros(rows, SITE_CENTROIDS, CENTROID_WIDTH), torch.zeros(rows, len(VIEWS)))


def row_domain(per_case: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Centroids and held-out thresholds (one per view) of a row's descriptors, by CT.

    ``None`` when there are too few.
    """
    per_case = [rows for rows in per_case if len(rows)]
    if sum(len(rows) for rows in per_case) < MIN_SLABS:
        return None
    centroids, thresholds = [], []
    for view in VIEWS:
        seen = [rows[:, view] for rows in per_case]
        held_out = []
        for c, rows in enumerate(seen):
            rest = [r for i, r in enumerate(seen) if i != c] or seen
            held_out.append(nearest(rows, cluster(torch.cat(rest), SITE_CENTROIDS)))
        thresholds.append(float(torch.quantile(torch.cat(held_out), QUANTILE)))
        centroids.append(cluster(torch.cat(seen), SITE_CENTROIDS))
    joined = torch.cat(centroids, dim=1).float()
    return joined, torch.tensor(thresholds).clamp_min(MIN_THRESHOLD)


def site_domain(
    cases: Sequence[tuple[torch.Tensor, torch.Tensor]],
    spacing_z: float,
    window_mm: float,
    structures: int,
) -> SiteDomain | None:
    """A site's domain from its preprocessed CTs and label maps ``(X, Y, Z)``.

    Label ``i`` is the decoder's structure ``i`` (0: background); ``structures`` is their
    number; ``window_mm`` the decoder's window along z. ``None`` when the CTs hold too
    little body to describe even the background.
    """
    slabs = [descriptors(image, spacing_z, window_mm) for image, _ in cases]
    body = [d[d[:, OWN_SLAB].sum(dim=1) > 0] for d in slabs]
    rows: list[list[torch.Tensor]] = [body]
    for k in range(1, structures + 1):
        present = [(label == k).flatten(0, 1).any(dim=0) for _, label in cases]
        rows.append([d[p] for d, p in zip(slabs, present, strict=True)])
    centroids = torch.zeros(structures + 1, SITE_CENTROIDS, CENTROID_WIDTH)
    thresholds = torch.zeros(structures + 1, len(VIEWS))
    for r, per_case in enumerate(rows):
        if (fitted := row_domain(per_case)) is not None:
            centroids[r], thresholds[r] = fitted
        elif r == 0:
            return None
    return SiteDomain(centroids, thresholds)


def join_centroids(sites: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(TASK_CENTROIDS, width)``: the sites' centroids, spread by farthest points."""
    rows = torch.cat(list(sites)).double().clamp(0.0, 1.0)  # what a root histogram can hold
    chosen = [0]
    gap = torch.cdist(rows, rows[:1]).squeeze(1)
    while len(chosen) < min(TASK_CENTROIDS, len(rows)):
        chosen.append(int(gap.argmax()))
        gap = torch.minimum(gap, torch.cdist(rows, rows[chosen[-1]][None]).squeeze(1))
    picked = rows[chosen]
    return picked[torch.arange(TASK_CENTROIDS) % len(picked)].float()


def join_domains(sites: Sequence[SiteDomain]) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder's domain from its sites': centroids and thresholds, row by row.

    Returns ``(1 + K, TASK_CENTROIDS, CENTROID_WIDTH)`` centroids and ``(1 + K, len(VIEWS))``
    thresholds: each row over the sites that have it (median threshold per view, bounded);
    a row no site has stays empty (thresholds 0). A structure's thresholds are at least
    the background's: a structure seen in a few slices of a few CTs would otherwise fit its
    row too tightly and silence its own decoder on the next patient (measured: a bladder
    seen in 4 CTs).
    """
    rows = sites[0].thresholds.shape[0]
    centroids = torch.zeros(rows, TASK_CENTROIDS, CENTROID_WIDTH)
    thresholds = torch.zeros(rows, len(VIEWS))
    for r in range(rows):
        having = [s for s in sites if float(s.thresholds[r, 0]) > 0]
        if having:
            for columns in view_columns():  # each view's centroids chosen on their own
                centroids[r, :, columns] = join_centroids(
                    [s.centroids[r][:, columns] for s in having]
                )
            for v in range(len(VIEWS)):
                median = statistics.median(float(s.thresholds[r, v]) for s in having)
                thresholds[r, v] = min(max(median, MIN_THRESHOLD), MAX_THRESHOLD)
    seen = thresholds[:, 0] > 0
    thresholds[seen] = torch.maximum(thresholds[seen], thresholds[:1])
    return centroids, thresholds


def domain_scores(
    slabs: torch.Tensor, centroids: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """``(1 + K, Z)``: each slice's score against each row (an empty row: the background's).

    A slice's score is the larger of its views' (:data:`VIEWS`): it is at home in a row
    only where both its window and its own slab are. Its window is compared on the slabs
    inside its CT (:func:`nearest_inside`; its own slab, always inside, as it is): a short
    scan's windows run past its ends, which a decoder trained on longer CTs never saw
    there, but which hides nothing from it (measured on `default`: the whole-body decoder,
    silenced on abdominal CTs by their empty slabs, segments their kidneys better than the
    abdominal decoder, 0.81-0.84 against 0.70-0.72). ``slabs`` are a volume's
    :func:`descriptors`, computed once for every decoder.
    """
    columns = view_columns()

    def score(r: int) -> torch.Tensor:
        window, own = (
            distance(slabs[:, view], centroids[r][:, columns[v]]) / float(thresholds[r, v])
            for v, (view, distance) in enumerate(zip(VIEWS, (nearest_inside, nearest), strict=True))
        )
        views = [window, own]
        return torch.stack(views).amax(dim=0)

    background = score(0)
    rows = [score(r) if thresholds[r, 0] > 0 else background for r in range(1, len(thresholds))]
    return torch.stack([background, *rows]).float()


def domain_scale(thresholds: torch.Tensor) -> float:
    """The distance a decoder's domain score 1 stands for.

    Its background row's thresholds, averaged over the views: the merge weighs two
    decoders' claims on distances, not on distances over thresholds of their own.
    """
    return float(thresholds[0].mean())
