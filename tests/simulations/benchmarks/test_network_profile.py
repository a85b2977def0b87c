"""The profile's timed training step, eager and under torch.compile."""

import pytest
import torch

from core.model import EncoderConfig
from simulations.benchmarks.network_profile import _train_step_times

SMALL = EncoderConfig((4, 8, 16))


def test_each_step_is_timed_and_the_warm_up_step_is_the_first():
    times = _train_step_times(SMALL, 16, 3, frozen=False)
    assert len(times) == 4 and all(t > 0 for t in times)


@pytest.mark.slow  # inductor compiles C++ for the first step (seconds, more when its cache is cold)
def test_the_compiled_step_runs_and_its_first_step_is_the_compilation():
    torch.manual_seed(0)
    eager = _train_step_times(SMALL, 16, 1, frozen=True)
    torch.manual_seed(0)
    compiled = _train_step_times(SMALL, 16, 1, frozen=True, compiled=True)
    assert len(compiled) == 2 and compiled[0] > max(compiled[1], eager[1])  # it compiled first
