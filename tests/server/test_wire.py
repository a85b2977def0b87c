import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.wire import RECEIVED, SENT, WireLog, read_wire_log, summarise


def test_arrays_are_logged_by_dtype_and_shape_and_scalars_whole(tmp_path):
    content = RecordDict(
        {
            "decoder": ArrayRecord({"w": Array(np.zeros((4, 2, 3, 3, 3), np.float32))}),
            "metrics": MetricRecord({"examples": 3, "loss": 0.5}),
            "config": ConfigRecord({"task": "abdomen", "blob": b"abc"}),
        }
    )
    summary = summarise(content)
    assert summary["decoder"] == {"arrays": {"w": {"dtype": "float32", "shape": [4, 2, 3, 3, 3]}}}
    assert summary["metrics"] == {"metrics": {"examples": 3, "loss": 0.5}}
    assert summary["config"] == {"config": {"task": "abdomen", "blob": {"bytes": 3}}}
    log = WireLog(tmp_path / "audit" / "wire.jsonl")
    log.write(SENT, "train.teacher", "hospA", content)
    log.write(RECEIVED, "train.teacher", "hospA", None, "SiteFailure: <path>: truncated")
    first, second = read_wire_log(log.path)
    assert first["content"] == summary and first["direction"] == SENT
    assert "content" not in second and second["error"].startswith("SiteFailure")
