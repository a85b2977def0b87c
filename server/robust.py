"""Robust aggregation: one hostile site must not move the federated average where it likes.

Pure functions on lists of ``(state, weight)`` pairs, where every state has already passed
:func:`core.payload.record_to_state` (finite, within fp16 range, the template's shapes):

1. :func:`clip_updates`: each site's update (its state minus the state the server sent)
   is scaled down to at most ``norm_bound`` times the median update norm (the lower
   median, so that with two sites the bound comes from the smaller update, not from the
   average of an honest and a hostile one). Flower's clipping helper does the scaling.
2. :func:`trimmed_mean` (three sites or more): per coordinate, the largest and smallest
   values (at least one site per side) are dropped and the rest averaged, unweighted,
   with Flower's ``trim_mean`` (as its ``FedTrimmedAvg``).
3. :func:`weighted_mean`: plain FedAvg (Flower's ``aggregate_arrayrecords``).

A site's weight is never a number it sends with its weights: :func:`capped_weights` makes
it from the case count the site declared once in ``describe``, capped, so a site that
claims a billion cases counts as ``cap``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm
from numpy.typing import NDArray

State = Mapping[str, torch.Tensor]
SiteState = tuple[State, float]
"""A site's checked state and its aggregation weight."""

DEFAULT_NORM_BOUND = 3.0
DEFAULT_TRIM_FRACTION = 0.2
MIN_SITES_TO_TRIM = 3
_WEIGHT = "weight"


@dataclass(frozen=True)
class RobustMean:
    """An aggregate and how it was made.

    Attributes:
        state: the aggregated state (the reference's dtypes).
        rule: ``"trimmed-mean"`` or ``"fedavg"``.
        scales: per site, in input order, the factor its update was scaled by (1.0: kept).
        bound: the update norm no site was allowed to exceed.
    """

    state: dict[str, torch.Tensor]
    rule: str
    scales: tuple[float, ...]
    bound: float


def capped_weights(cases: Mapping[str, int], cap: int) -> dict[str, float]:
    """Each site's aggregation weight: its declared case count, at most ``cap``.

    Args:
        cases: per site, the case count it declared in ``describe``.
        cap: the largest weight one site may have.

    Raises:
        ValueError: for a cap below 1 or a count that is not a whole number >= 1.
    """
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"weight cap {cap!r}: expected a whole number >= 1")
    weights = {}
    for site, count in cases.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{site}: case count {count!r}, expected a whole number >= 1")
        weights[site] = float(min(count, cap))
    return weights


def _arrays(state: State, names: Sequence[str]) -> list[NDArray[np.floating]]:
    """Views of the tensors (no copy: Flower's helpers never write into their inputs)."""
    return [state[name].detach().to("cpu").numpy() for name in names]


def _norm(arrays: Sequence[NDArray[np.floating]], base: Sequence[NDArray[np.floating]]) -> float:
    return get_norm([a - b for a, b in zip(arrays, base, strict=True)])


def _check(sites: Sequence[SiteState], reference: State) -> list[str]:
    """The array names, after checking that every site matches the reference."""
    if not sites:
        raise ValueError("no site states to aggregate")
    names = list(reference)
    for i, (state, weight) in enumerate(sites):
        if set(state) != set(names):
            raise ValueError(f"site {i}: arrays differ from the reference")
        if any(state[n].shape != reference[n].shape for n in names):
            raise ValueError(f"site {i}: shapes differ from the reference")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"site {i}: weight {weight!r}, expected a finite number > 0")
    return names


def update_norm(state: State, reference: State) -> float:
    """The L2 norm of ``state - reference`` over all arrays."""
    names = list(reference)
    return _norm(_arrays(state, names), _arrays(reference, names))


def clip_updates(
    sites: Sequence[SiteState], reference: State, norm_bound: float = DEFAULT_NORM_BOUND
) -> tuple[list[SiteState], tuple[float, ...], float]:
    """Scale each site's update down to at most ``norm_bound`` x the lower-median norm.

    Args:
        sites: checked states and weights.
        reference: the state the server sent this round.
        norm_bound: the multiple of the median update norm a site may reach (>= 1).

    Returns:
        The sites (an unclipped site's state is passed through untouched), the scale
        applied to each update, and the norm bound used.

    Raises:
        ValueError: for no sites, a bound below 1, or states that differ from the reference.
    """
    if not norm_bound >= 1.0:
        raise ValueError(f"norm bound {norm_bound}: expected >= 1")
    names = _check(sites, reference)
    base = _arrays(reference, names)
    norms = [_norm(_arrays(state, names), base) for state, _ in sites]
    bound = norm_bound * statistics.median_low(norms)
    out: list[SiteState] = []
    scales = []
    for (state, weight), norm in zip(sites, norms, strict=True):
        if norm <= bound:
            out.append((state, weight))
            scales.append(1.0)
            continue
        arrays = _arrays(state, names)
        compute_clip_model_update(arrays, base, bound)  # in place: base + clipped update
        clipped = {
            n: torch.from_numpy(a).to(reference[n].dtype)
            for n, a in zip(names, arrays, strict=True)
        }
        out.append((clipped, weight))
        scales.append(bound / norm)
    return out, tuple(scales), bound


def trimmed_mean(
    sites: Sequence[SiteState], trim_fraction: float = DEFAULT_TRIM_FRACTION
) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean (weights are not used), at least one site cut per side.

    Args:
        sites: at least three checked states (weights ignored).
        trim_fraction: the share of sites cut at each end, in [0, 0.5); at least one.

    Raises:
        ValueError: for fewer than three sites, a fraction outside [0, 0.5), or states
            that differ.
    """
    if len(sites) < MIN_SITES_TO_TRIM:
        raise ValueError(f"a trimmed mean needs {MIN_SITES_TO_TRIM} sites, got {len(sites)}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim fraction {trim_fraction}: expected a value in [0, 0.5)")
    reference = sites[0][0]
    names = _check(sites, reference)
    n = len(sites)
    cut = max(1, int(trim_fraction * n))
    # Flower cuts int(fraction * n) per side; a quarter site more keeps that int exact.
    fraction = (cut + 0.25) / n
    out = {}
    for name in names:
        stacked = np.stack([state[name].detach().to("cpu").numpy() for state, _ in sites])
        mean = np.asarray(trim_mean(stacked, fraction))
        out[name] = torch.from_numpy(mean).to(reference[name].dtype)
    return out


def weighted_mean(sites: Sequence[SiteState]) -> dict[str, torch.Tensor]:
    """Plain FedAvg: the weighted mean of the states.

    Raises:
        ValueError: for no sites, a weight that is not finite and > 0, or states that differ.
    """
    reference = sites[0][0] if sites else {}
    _check(sites, reference)
    records = [
        RecordDict(
            {
                "state": ArrayRecord(
                    {n: Array(t.detach().to("cpu").contiguous().numpy()) for n, t in state.items()}
                ),
                "weight": MetricRecord({_WEIGHT: float(weight)}),
            }
        )
        for state, weight in sites
    ]
    mean = aggregate_arrayrecords(records, _WEIGHT)
    return {n: torch.from_numpy(mean[n].numpy()).to(t.dtype) for n, t in reference.items()}


def robust_mean(
    sites: Sequence[SiteState],
    reference: State,
    norm_bound: float = DEFAULT_NORM_BOUND,
    trim_fraction: float = DEFAULT_TRIM_FRACTION,
    trim: bool = True,
) -> RobustMean:
    """Clip every update, then take the trimmed mean (``trim`` and >= 3 sites) or FedAvg.

    Args:
        sites: checked states and their weights (see :func:`capped_weights`).
        reference: the state the server sent this round.
        norm_bound: see :func:`clip_updates`.
        trim_fraction: see :func:`trimmed_mean`.
        trim: whether to trim at all (``False``: the plan's ``clipped`` rule).

    Raises:
        ValueError: for no sites, bad settings, or states that differ from the reference.
    """
    clipped, scales, bound = clip_updates(sites, reference, norm_bound)
    if trim and len(clipped) >= MIN_SITES_TO_TRIM:
        return RobustMean(trimmed_mean(clipped, trim_fraction), "trimmed-mean", scales, bound)
    return RobustMean(weighted_mean(clipped), "fedavg", scales, bound)
