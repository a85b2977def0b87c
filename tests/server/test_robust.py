import math

import pytest
import torch

from core.payload import PayloadError, record_to_state, state_to_record
from server.robust import (
    DEFAULT_NORM_BOUND,
    capped_weights,
    clip_updates,
    robust_mean,
    trimmed_mean,
    update_norm,
    weighted_mean,
)

CAP = 50


def _reference():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(16, 8, generator=g), "b": torch.randn(8, generator=g)}


def _honest(reference, n, seed=1):
    """n sites that moved the same way, each with its own noise (update norms about 1)."""
    g = torch.Generator().manual_seed(seed)
    direction = {k: torch.randn(v.shape, generator=g) for k, v in reference.items()}
    scale = 1.0 / math.sqrt(sum(float((d**2).sum()) for d in direction.values()))
    return [
        {
            k: reference[k] + scale * (direction[k] + 0.3 * torch.randn(v.shape, generator=g))
            for k, v in reference.items()
        }
        for _ in range(n)
    ]


def _distance(a, b):
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


def _attacks(reference, honest):
    mean_update = {k: sum(s[k] for s in honest) / len(honest) - reference[k] for k in reference}
    return {
        "weights +1000": {k: torch.full_like(v, 1000.0) for k, v in reference.items()},
        "update x -50": {k: reference[k] - 50 * mean_update[k] for k in reference},
        "fp16 max": {k: torch.full_like(v, 65504.0) for k, v in reference.items()},
    }


@pytest.mark.parametrize("n_honest", [2, 3, 4])
@pytest.mark.parametrize("attack", ["weights +1000", "update x -50", "fp16 max"])
def test_one_hostile_site_moves_the_aggregate_less_than_the_bound(n_honest, attack):
    reference = _reference()
    honest = _honest(reference, n_honest)
    hostile = _attacks(reference, honest)[attack]
    cases = {f"site{i}": 20 for i in range(n_honest)} | {"evil": 10**9}
    weights = capped_weights(cases, CAP)
    assert weights["evil"] == CAP
    sites = [(s, weights[f"site{i}"]) for i, s in enumerate(honest)] + [(hostile, weights["evil"])]
    honest_only = weighted_mean(sites[:-1])
    bound = DEFAULT_NORM_BOUND * min(update_norm(s, reference) for s in honest)
    sent = {k: v.clone() for k, v in hostile.items()}
    robust = robust_mean(sites, reference)
    assert all(torch.equal(hostile[k], sent[k]) for k in sent)  # inputs are left as they were
    assert robust.rule == "trimmed-mean"
    assert robust.scales[:-1] == (1.0,) * n_honest and robust.scales[-1] < 0.1
    assert _distance(robust.state, honest_only) < bound
    assert _distance(weighted_mean(sites), honest_only) > 5 * bound  # unprotected FedAvg


def test_a_hostile_site_among_two_is_clipped_under_fedavg():
    reference = _reference()
    honest = _honest(reference, 1)[0]
    hostile = {k: torch.full_like(v, 1000.0) for k, v in reference.items()}
    robust = robust_mean([(honest, 20.0), (hostile, float(CAP))], reference)
    assert robust.rule == "fedavg" and robust.scales[0] == 1.0
    bound = DEFAULT_NORM_BOUND * update_norm(honest, reference)
    assert robust.bound == pytest.approx(bound)
    assert _distance(robust.state, honest) < bound


def test_fp32_near_max_never_reaches_aggregation():
    reference = _reference()
    hostile = {k: torch.full_like(v, 3e38) for k, v in reference.items()}
    with pytest.raises(PayloadError, match="beyond"):
        record_to_state(state_to_record(hostile, fp16=False), reference, "evil: decoder")


@pytest.mark.parametrize("n", [2, 3, 5])
def test_honest_sites_leave_clipping_inactive_and_match_fedavg(n):
    reference = _reference()
    honest = _honest(reference, n, seed=n)
    weights = [float(10 + 7 * i) for i in range(n)]
    sites = list(zip(honest, weights, strict=True))
    clipped, scales, _ = clip_updates(sites, reference)
    assert scales == (1.0,) * n and all(c is s for (c, _), s in zip(clipped, honest, strict=True))
    fedavg = {
        k: sum(w * s[k] for s, w in zip(honest, weights, strict=True)) / sum(weights)
        for k in reference
    }
    assert all(torch.allclose(weighted_mean(sites)[k], fedavg[k], atol=1e-6) for k in reference)
    robust = robust_mean(sites, reference)
    median_norm = sorted(update_norm(s, reference) for s in honest)[(n - 1) // 2]
    if n < 3:
        assert robust.rule == "fedavg"
        assert all(torch.equal(robust.state[k], weighted_mean(sites)[k]) for k in reference)
    else:
        assert _distance(robust.state, fedavg) < 0.3 * median_norm


def test_trimmed_mean_cuts_at_least_one_site_per_side():
    def sites(values):
        return [({"x": torch.tensor([float(v)])}, 1.0) for v in values]

    assert trimmed_mean(sites([0, 1, 100]), 0.0)["x"].item() == 1.0
    assert trimmed_mean(sites([0, 1, 2, 3, 100]), 0.2)["x"].item() == 2.0
    assert trimmed_mean(sites([-100, 0, 1, 2, 3, 4, 5, 6, 7, 100]), 0.2)["x"].item() == 3.5
    with pytest.raises(ValueError, match="needs 3 sites"):
        trimmed_mean(sites([0, 1]))
    with pytest.raises(ValueError, match="trim fraction"):
        trimmed_mean(sites([0, 1, 2]), 0.5)


def test_updates_that_did_not_move_clip_a_lone_mover_to_the_reference():
    reference = {"x": torch.zeros(3)}
    still = {"x": torch.zeros(3)}
    assert clip_updates([(still, 1.0), (still, 1.0)], reference)[1] == (1.0, 1.0)
    mover = {"x": torch.ones(3)}
    clipped, scales, bound = clip_updates([(still, 1.0), (still, 1.0), (mover, 1.0)], reference)
    assert bound == 0.0 and scales[2] == 0.0 and torch.equal(clipped[2][0]["x"], reference["x"])


def test_weights_and_inputs_are_checked():
    assert capped_weights({"a": 3, "b": 10**9}, 100) == {"a": 3.0, "b": 100.0}
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="case count"):
            capped_weights({"a": bad}, 100)
    with pytest.raises(ValueError, match="weight cap"):
        capped_weights({"a": 3}, 0)
    reference = _reference()
    with pytest.raises(ValueError, match="weight"):
        weighted_mean([(reference, float("nan"))])
    with pytest.raises(ValueError, match="arrays differ"):
        robust_mean([({"w": reference["w"]}, 1.0)], reference)
    with pytest.raises(ValueError, match="no site"):
        robust_mean([], reference)


def test_the_clipped_rule_bounds_a_hostile_site_without_trimming_honest_ones():
    reference = _reference()
    honest = _honest(reference, 3)
    hostile = {k: v + 1000.0 for k, v in reference.items()}
    sites = [(s, 20.0) for s in honest] + [(hostile, 20.0)]
    clipped = robust_mean(sites, reference, trim=False)
    assert clipped.rule == "fedavg" and clipped.scales[:-1] == (1.0,) * 3
    assert clipped.scales[-1] < 1e-2
    honest_only = weighted_mean(sites[:-1])
    # a quarter of the weight, at most the bound from the reference
    reach = (clipped.bound + update_norm(honest_only, reference)) / 4
    assert _distance(clipped.state, honest_only) <= reach + 1e-4
    assert _distance(weighted_mean(sites), honest_only) > 100 * clipped.bound
