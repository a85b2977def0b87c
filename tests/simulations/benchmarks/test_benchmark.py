import json

import pytest

from simulations.benchmarks.benchmark import ORDER
from simulations.benchmarks.report import summarize, upload_ratio
from simulations.scenario import load_scenario, with_federation
from tests.conftest import BENCHMARKED


@pytest.mark.slow  # the quick benchmark: a Flower simulation and every central baseline
def test_quick_benchmark_reports_every_method_consistently(tiny_benchmark):
    doc = json.loads((tiny_benchmark / "benchmark.json").read_text())
    tasks, methods = doc["tasks"], doc["methods"]
    assert tasks == ["abdomen", "chest"] and list(methods) == [m for m in ORDER if m in BENCHMARKED]
    for name, result in methods.items():
        assert len(result["stages"]) == len(tasks), name
        for k, stage in enumerate(result["stages"]):
            assert list(stage) == tasks[: k + 1], name  # every task so far, after every stage
            for scores in stage.values():
                assert all(v is None or 0.0 <= v <= 1.0 for v in scores["dice"].values())
        assert result["parameters"] > 0 and result["predict_seconds"] > 0
    # continual learning: each decoder alone scores exactly the same after later stages
    assert summarize(methods["continual"], tasks, "own_stages")["forgetting"] == 0.0
    assert summarize(methods["continual"], tasks, "own_stages")["max_forgetting"] == 0.0
    # the naive merge of one decoder is its arg-max: the decoder alone, but for windows that
    # miss the body (not run when merging), where a 3-step decoder still says foreground
    naive, alone = methods["naive_merge"]["stages"][0], methods["continual"]["own_stages"][0]
    for structure, dice in alone["abdomen"]["dice"].items():
        merged = naive["abdomen"]["dice"][structure]
        assert merged == (None if dice is None else pytest.approx(dice, abs=0.02)), structure
    per_task = methods["continual"]["train_seconds_per_task"]  # the server's, from the journal
    assert set(per_task) == set(tasks) and all(v > 0 for v in per_task.values())
    assert methods["continual"]["train_seconds"] == pytest.approx(sum(per_task.values()), abs=0.1)
    one = doc["one_model_parameters"]
    assert methods["upper_bound"]["parameters"] > 1.9 * one  # a model per task
    assert methods["continual"]["parameters"] < 1.05 * one  # trimmed students: about one model
    assert methods["mib"]["parameters"] < 1.05 * one  # one model, a few head channels
    assert 0 < upload_ratio(methods["continual"]) < 1
    report = (tiny_benchmark / "report.md").read_text()
    assert "| this method |" in report and "| MiB |" in report and "## Per structure" in report
    for png in ("dice_per_stage.png", "size_vs_dice.png", "overlays.png"):
        assert (tiny_benchmark / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_rerun_reuses_finished_methods(tiny_benchmark):
    from simulations.benchmarks.benchmark import run_benchmark

    said = []
    before = (tiny_benchmark / "mib.json").read_text()
    run_benchmark(
        load_scenario("tiny"), tiny_benchmark, quick=True, methods=BENCHMARKED, say=said.append
    )
    assert sum("reusing" in s for s in said) == len(BENCHMARKED)
    assert (tiny_benchmark / "mib.json").read_text() == before


@pytest.mark.slow  # the central methods on tiny for 2-5 steps a task (no Flower)
def test_plateau_budgets_reach_the_central_methods_which_share_the_first_stage(tmp_path):
    from simulations.benchmarks.benchmark import run_benchmark
    from simulations.benchmarks.curves import curve_path
    from simulations.benchmarks.shared_stage import FOLDER
    from simulations.run import write_sites_once

    tiny = load_scenario("tiny")
    small = {"encoder_widths": [4, 8, 16]}  # a smaller network than the scenario's
    tiny = with_federation(tiny, small)
    out, curves = tmp_path / "bench", tmp_path / "curves"
    write_sites_once(tiny, out / "continual" / "sites", print)  # what continual would write
    plateau = {"abdomen": 2, "chest": 1}
    for task, steps in plateau.items():
        doc = {"method": "upper_bound", "task": task, "scenario": "tiny", "seed": 0}
        doc |= {"points": [], "plateau_steps": steps}
        curves.mkdir(exist_ok=True)
        curve_path(curves, "upper_bound", task).write_text(json.dumps(doc))
    said = []
    methods = ("upper_bound", "lwf")
    doc = run_benchmark(
        tiny, out, methods=methods, say=said.append, budget="plateau", curves=curves
    )
    assert doc["budget"] == "plateau" and list(doc["methods"]) == list(methods)
    for name, result in doc["methods"].items():
        assert result["steps_per_task"] == plateau, name
        assert len(result["stages"]) == 2 and result["train_seconds"] > 0
    assert len(list((out / FOLDER).glob("*.safetensors"))) == 1  # one for both methods
    assert sum("method(s) left, about" in s for s in said) == len(methods)
    with pytest.raises(ValueError, match="use another --out"):
        run_benchmark(tiny, out, methods=("lwf",), say=said.append)  # the scenario's budget
