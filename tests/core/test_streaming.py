import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from core.streaming import body_box, count_windows, stream_windows


def _heads(x):
    """Position-dependent outputs (so misplaced windows show)."""
    conv = torch.nn.functional.avg_pool3d(x, 3, 1, 1)
    return {"organ": torch.cat([x, conv, x * conv], dim=1), "head": x.mean(1, keepdim=True) + conv}


def _predictor(x):
    """The outputs as the streamed windows take them: one pair after another."""
    yield from _heads(x).items()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [((20, 17, 41), (8, 8, 8), 0.25), ((6, 12, 30), (8, 8, 9), 0.5), ((9, 9, 5), (8, 8, 8), 0.25)],
)
def test_streamed_windows_blend_as_monai_does(shape, roi, overlap):
    image = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    expected = sliding_window_inference(image, roi, 1, _heads, overlap)
    got = {"organ": torch.full((1, 3, *shape), torch.nan), "head": torch.full((1, 1, *shape), 9.0)}
    ranges = []

    def sink(z0, z1, blended):
        ranges.append((z0, z1))
        for key, value in blended.items():
            got[key][..., z0:z1] = value

    calls = []

    def counted(x):
        calls.append(x.shape)
        return _predictor(x)

    stream_windows(image, roi, overlap, counted, sink)
    assert ranges[0][0] == 0 and ranges[-1][1] == shape[2]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    assert len(calls) == count_windows(shape, roi, overlap)
    assert all(tuple(c[2:]) == roi for c in calls)


def test_windows_outside_the_box_are_skipped_and_the_box_is_blended_as_monai_does():
    shape, roi, box = (20, 17, 41), (8, 8, 8), (slice(3, 12), slice(5, 14), slice(10, 30))
    image = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    expected = sliding_window_inference(image, roi, 1, _heads, 0.25)["organ"]
    got = torch.full((1, 3, 9, 9, shape[2]), torch.nan)

    def sink(z0, z1, blended):
        got[..., z0:z1] = blended["organ"]

    calls = []
    stream_windows(image, roi, 0.25, lambda x: calls.append(x) or _predictor(x), sink, keep=box)
    torch.testing.assert_close(got[..., box[2]], expected[..., box[0], box[1], box[2]])
    assert len(calls) == count_windows(shape, roi, 0.25, box) < count_windows(shape, roi, 0.25)


def test_streaming_holds_about_one_window_of_slices():
    image = torch.rand(1, 1, 8, 8, 200)
    held = []

    def sink(z0, z1, blended):
        held.append(blended["organ"].shape[-1])

    stream_windows(image, (8, 8, 8), 0.25, _predictor, sink)
    assert sum(held) == 200 and max(held) <= 8


def test_the_body_box_is_the_largest_component_with_a_margin():
    tissue = np.zeros((30, 30, 30), bool)
    tissue[10:20, 12:18, 5:25] = True  # the patient
    tissue[2:4, 2:4, 2:4] = True  # a speck of noise
    assert body_box(tissue, 2) == (slice(8, 22), slice(10, 20), slice(3, 27))
    assert body_box(np.zeros((4, 4, 4), bool), 2) is None
