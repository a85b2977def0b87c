import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from core.data.transforms import Preprocessing
from core.model import Decoder, Genotype
from core.payload import state_to_record
from core.phases import TEACHER
from core.protocol import CONFIG, DECODER, ENCODER_SHA, METRICS, RoundConfig
from server.aggregate import RoundFailed, aggregate
from server.federation import Reply, SiteInfo
from server.plan import AggregationSettings
from tests.models import TINY

SHA = "e" * 64
CFG = RoundConfig(
    task="abdomen",
    phase="teacher",
    structures=("liver",),
    genotype=Genotype.teacher(3),
    encoder=TINY,
    preprocessing=Preprocessing(),
    patch=(32, 32, 32),
    encoder_sha256=SHA,
)


DESCRIBED: dict[str, int] = {}  # each site's case count: its training split + 1 validation case


def _fedavg(replies, templates, min_sites=1, max_bytes=2**30):
    settings = AggregationSettings(aggregation="fedavg")
    return aggregate(replies, TEACHER, CFG, templates, DESCRIBED, settings, min_sites, max_bytes)


def _state(seed):
    torch.manual_seed(seed)
    return Decoder(TINY.widths, Genotype.uniform("2d", 0.25, 3), ("liver",)).state_dict()


def _reply(name, state, examples, sha=SHA, record=None):
    DESCRIBED[name] = examples + 1
    content = RecordDict(
        {
            DECODER: record or state_to_record(state, fp16=False),
            METRICS: MetricRecord({"examples": examples, "loss": 1.0}),
            CONFIG: ConfigRecord({ENCODER_SHA: sha}),
        }
    )
    return Reply(SiteInfo(0, name, []), content)


def test_weighted_average_by_case_counts():
    a, b = _state(1), _state(2)
    out = _fedavg([_reply("A", a, 1), _reply("B", b, 3)], {DECODER: a}, min_sites=2)
    for name in a:
        assert torch.allclose(out.states[DECODER][name], 0.25 * a[name] + 0.75 * b[name], atol=1e-6)
    assert list(out.replies) == ["A", "B"] and out.loss == 1.0 and not out.rejected


def _with(state, name, array):
    record = state_to_record(state, fp16=False)
    out = ArrayRecord()
    for key, value in record.items():
        out[key] = Array(array) if key == name else value
    return out


def test_bad_payloads_are_rejected_and_the_round_goes_on():
    good, template = _state(1), _state(0)
    first = next(iter(good))
    nan = good[first].numpy().copy()
    nan.flat[0] = np.nan
    replies = [
        _reply("good", good, 2),
        _reply("nan", good, 2, record=_with(good, first, nan)),
        _reply("shape", good, 2, record=_with(good, first, np.zeros((3, 3), np.float32))),
        _reply("other-encoder", good, 2, sha="f" * 64),
        Reply(SiteInfo(0, "dropped", []), None, "Node Unavailable"),
    ]
    out = _fedavg(replies, {DECODER: template})
    assert list(out.replies) == ["good"]
    assert set(out.rejected) == {"nan", "shape", "other-encoder", "dropped"}
    assert "NaN" in out.rejected["nan"] and "shape" in out.rejected["shape"]
    assert "trained on encoder ffffffffffff" in out.rejected["other-encoder"]
    assert "Node Unavailable" in out.rejected["dropped"]
    assert all(torch.equal(out.states[DECODER][k], good[k]) for k in good)


def test_too_few_usable_sites_fail_the_round():
    good = _state(1)
    replies = [_reply("good", good, 2), _reply("bad", good, 0)]
    with pytest.raises(RoundFailed, match="1 usable site"):
        _fedavg(replies, {DECODER: good}, min_sites=2)
