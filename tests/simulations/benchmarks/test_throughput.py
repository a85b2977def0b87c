import pytest

from core.model import EncoderConfig
from simulations.benchmarks.throughput import conv_peak, prediction_window, training_step

SMALL = EncoderConfig((4, 8, 16))


def test_the_convolution_peak_counts_forward_and_backward():
    peak = conv_peak(8, "fp32", repeats=1)
    assert peak["gflop"] == pytest.approx(3 * 2 * 64 * 64 * 27 * 8**3 / 1e9, rel=0.05)
    assert peak["gflops"] == pytest.approx(peak["gflop"] / peak["seconds"])


@pytest.mark.slow  # writes two phantom CTs and trains the small network a few steps
def test_a_training_step_is_counted_and_broken_down():
    step = training_step(SMALL, 16, "fp32", repeats=2)
    assert step["gflop"] > 0 and step["seconds"] > 0
    parts = step["breakdown_seconds"]
    assert set(parts) == {"data", "forward", "loss", "backward", "optimiser"}
    assert sum(parts.values()) <= step["seconds"] * 1.05
    window = prediction_window(SMALL, 16, decoders=2, repeats=1)
    assert window["gflop"] < step["gflop"] * 2  # no backward, one window
