"""Each decoder's domain: the kinds of body region its sites trained it on, learnt at the sites.

The merge must know where a decoder may speak without knowing the scenario or the
patient's anatomy. A body region is described, slice by slice, by the distribution of the
intensities of its axial slab (:data:`SLAB_MM` thick, the whole cross-section, air left
out): the histogram over the model's HU window, as the root of its shares (so Euclidean
distance is Hellinger's). A head slab holds skull and brain, a thoracic one lung, an
abdominal one fat and solid organs, a pelvic one large bones and bladder. HU is a
physical unit, so this holds across patients, body sizes, fields of view and scanners,
and nothing in it is an anatomical constant or a coordinate.

A site summarises the slabs of its training CTs by :data:`SITE_CENTROIDS` k-means
centroids and a threshold: the :data:`QUANTILE` of its slabs' distances to the nearest
centroid fitted on its other CTs (leave one CT out). The server joins the sites'
centroids of a task (at most :data:`TASK_CENTROIDS`, spread by farthest points) and takes
the median threshold, so one site cannot widen a domain alone. At prediction a slice's
*domain score* for a decoder is its slab's distance to the nearest centroid over that
threshold: about 1 or below where the CT looks like what the decoder was trained on, far
above elsewhere (a head for a decoder that only ever saw abdomens). The merge silences a
decoder at the slices where its score exceeds ``MergeSettings.domain_factor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

BINS = 32  # histogram bins over the HU window (about 60 HU each for a 2000 HU window)
SLAB_MM = 64.0  # thickness of the axial slab that describes a slice's region
SITE_CENTROIDS = 16  # what a site sends
TASK_CENTROIDS = 64  # what a decoder keeps
QUANTILE = 0.95  # of a site's held-out slab distances: its threshold
MIN_SLABS = 8  # a site with fewer slices of body has no domain to describe


def descriptors(image: torch.Tensor, spacing_z: float) -> torch.Tensor:
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


def cluster(rows: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``(k, BINS)`` k-means centroids of ``rows`` (all of them, repeated, if there are few)."""
    if len(rows) <= k:
        return rows[torch.arange(k) % len(rows)].clone()
    centroids, _ = kmeans2(rows.numpy(), k, seed=seed, minit="++")
    return torch.from_numpy(np.asarray(centroids)).double()


@dataclass(frozen=True)
class SiteDomain:
    """What a site sends: its centroids ``(SITE_CENTROIDS, BINS)`` and held-out threshold."""

    centroids: torch.Tensor
    threshold: float
    slabs: int


def site_domain(cases: Sequence[torch.Tensor], spacing_z: float) -> SiteDomain | None:
    """A site's domain from its preprocessed CTs ``(X, Y, Z)`` (``None``: too little body)."""
    per_case = []
    for image in cases:
        rows = descriptors(image, spacing_z)
        if len(rows := rows[rows.sum(dim=1) > 0]):
            per_case.append(rows)
    if sum(len(rows) for rows in per_case) < MIN_SLABS:
        return None
    held_out = []
    for c, rows in enumerate(per_case):
        rest = [r for i, r in enumerate(per_case) if i != c] or per_case
        held_out.append(nearest(rows, cluster(torch.cat(rest), SITE_CENTROIDS)))
    threshold = float(torch.quantile(torch.cat(held_out), QUANTILE))
    centroids = cluster(torch.cat(per_case), SITE_CENTROIDS)
    return SiteDomain(centroids.float(), max(threshold, 1e-3), sum(map(len, per_case)))


def join_centroids(sites: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(TASK_CENTROIDS, BINS)``: the sites' centroids, spread by farthest points if many."""
    rows = torch.cat(list(sites)).double().clamp(0.0, 1.0)  # what a root histogram can hold
    chosen = [0]
    gap = torch.cdist(rows, rows[:1]).squeeze(1)
    while len(chosen) < min(TASK_CENTROIDS, len(rows)):
        chosen.append(int(gap.argmax()))
        gap = torch.minimum(gap, torch.cdist(rows, rows[chosen[-1]][None]).squeeze(1))
    picked = rows[chosen]
    return picked[torch.arange(TASK_CENTROIDS) % len(picked)].float()


def domain_scores(
    image: torch.Tensor, centroids: torch.Tensor, threshold: float, spacing_z: float
) -> torch.Tensor:
    """``(Z,)``: each slice's domain score (its slab's distance over ``threshold``)."""
    return (nearest(descriptors(image, spacing_z), centroids) / threshold).float()
