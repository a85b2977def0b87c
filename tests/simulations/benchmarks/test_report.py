"""The benchmark report's headline table and its ratios to both references."""

from simulations.benchmarks.report import markdown


def _stages(*finals: dict[str, float]) -> list[dict]:
    return [
        {t: {"dice": {"organ": d}, "hd95": {"organ": 1.0}} for t, d in f.items()} for f in finals
    ]


def _method(stages: list[dict], **extra) -> dict:
    return {
        "stages": stages,
        "parameters": 100,
        "train_seconds": 10.0,
        "predict_seconds": 1.0,
        **extra,
    }


def test_the_headline_gives_each_task_both_reference_ratios_and_the_decoders_alone():
    merged = _stages({"a": 0.9}, {"a": 0.8, "b": 0.5})
    alone = _stages({"a": 0.9}, {"a": 0.9, "b": 0.6})
    doc = {
        "scenario": "s",
        "quick": False,
        "budget": "plateau",
        "machine": "m",
        "device": "cpu",
        "tasks": ["a", "b"],
        "one_model_parameters": 100,
        "methods": {
            "continual": _method(merged, own_stages=alone),
            "upper_bound": _method(_stages({"a": 0.8}, {"a": 0.8, "b": 0.5})),
            "joint": _method(_stages({"a": 0.5}, {"a": 0.4, "b": 0.2})),
        },
    }
    lines = markdown(doc).splitlines()
    row = next(line for line in lines if line.startswith("| this method |"))
    # a, b, mean, x upper bound (0.65 / 0.65), x joint (0.65 / 0.3), forgetting 0.9 - 0.8
    assert row.split(" | ")[1:6] == ["0.800", "0.500", "0.650", "1.00", "2.17"]
    assert "| 0.100 (0.100) |" in row
    alone_row = next(line for line in lines if line.startswith("| this method, each decoder"))
    assert alone_row.split(" | ")[1:4] == ["0.900", "0.600", "0.750"]
    assert "| 0.000 (0.000) |" in alone_row
    assert all(
        line.count("|") == lines[lines.index(row) - 1].count("|") for line in (row, alone_row)
    )
    ratios = next(
        line for line in lines if line.startswith("| this method, each decoder") and "/" in line
    )
    assert ratios == "| this method, each decoder alone | 1.12 / 2.25 | 1.20 / 3.00 |"
