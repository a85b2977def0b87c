"""The server's step on a round's average: FedAvg by default, FedAvgM and FedAdam on request."""

from __future__ import annotations

import pytest
import torch

from server.plan import AggregationSettings
from server.server_optimizer import ServerOptimizer


def _state(value, count=3):
    return {"w": torch.full((2, 3), float(value)), "n": torch.tensor(count)}


def test_the_default_is_plain_fedavg():
    optimizer = ServerOptimizer(AggregationSettings())
    average = {"w": torch.randn(4), "n": torch.tensor(7)}
    out = optimizer.step("decoder", {"w": torch.zeros(4), "n": torch.tensor(1)}, average)
    assert all(torch.equal(out[k], v) for k, v in average.items())
    assert optimizer.is_fedavg and not optimizer.params  # no server state kept


def test_momentum_extrapolates_a_direction_the_sites_keep():
    optimizer = ServerOptimizer(AggregationSettings(server_lr=2.0, server_momentum=0.5))
    sent = _state(0.0)
    first = optimizer.step("decoder", sent, _state(1.0, count=9))  # every site moved by +1
    assert torch.allclose(first["w"], torch.full((2, 3), 2.0))  # lr 2 x the average move
    assert first["n"].item() == 9 and first["n"].dtype == sent["n"].dtype  # counters: averaged
    second = optimizer.step("decoder", first, {**first, "w": first["w"] + 1.0})
    assert torch.allclose(second["w"], torch.full((2, 3), 5.0))  # 2 + 2 x (0.5 x 1 + 1)


def test_adam_moves_each_weight_by_about_its_learning_rate_whatever_the_update_size():
    optimizer = ServerOptimizer(AggregationSettings(server_optimizer="adam", server_lr=0.05))
    sent = {"w": torch.zeros(3)}
    out = optimizer.step("encoder", sent, {"w": torch.tensor([10.0, -0.5, 0.0])})
    assert torch.allclose(out["w"], torch.tensor([0.05, -0.05, 0.0]), atol=1e-3)


def test_a_state_the_optimizer_did_not_produce_starts_it_afresh():
    settings = AggregationSettings(server_lr=1.0, server_momentum=0.9)
    optimizer = ServerOptimizer(settings)
    optimizer.step("decoder", _state(0.0), _state(1.0))
    elsewhere = optimizer.step("decoder", _state(10.0), _state(11.0))  # not what it returned
    fresh = ServerOptimizer(settings).step("decoder", _state(10.0), _state(11.0))
    assert torch.equal(elsewhere["w"], fresh["w"]) and torch.allclose(fresh["w"], _state(11.0)["w"])


def test_keys_keep_their_own_momentum():
    optimizer = ServerOptimizer(AggregationSettings(server_momentum=0.9))
    optimizer.step("encoder", _state(0.0), _state(1.0))
    out = optimizer.step("decoder", _state(0.0), _state(-1.0))
    assert torch.allclose(out["w"], _state(-1.0)["w"])  # the encoder's momentum is not added


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_server_copy_keeps_the_sent_dtype(optimizer):
    server = ServerOptimizer(AggregationSettings(server_optimizer=optimizer, server_lr=0.5))
    sent = {"w": torch.zeros(4, dtype=torch.float64)}
    out = server.step("decoder", sent, {"w": torch.ones(4, dtype=torch.float64)})
    assert out["w"].dtype == torch.float64 and bool((out["w"] > 0).all())
