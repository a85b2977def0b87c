import json

import pytest
from typer.testing import CliRunner

from csfl import app
from simulations.benchmarks.curves import (
    CurveSettings,
    Trainer,
    curve_path,
    duration,
    learning_curve,
    mean_dice,
    plateau_budgets,
    plot_curve,
)

IDENTITY = {
    "method": "upper_bound",
    "task": "thorax",
    "scenario": "default",
    "seed": 0,
    "settings": {},
}
# what a reference reaches at each budget (the thorax figures of the issue, then flat)
SCRIPT = {250: 0.086, 500: 0.40, 1000: 0.741, 2000: 0.762, 4000: 0.765, 8000: 0.766}


class Scripted:
    """A fake method: a budget's 'model' is its step count; Dice comes from the script."""

    def __init__(self, script=SCRIPT, fail_at=None):
        self.script, self.fail_at, self.trained = script, fail_at, []

    def train(self, steps):
        if steps == self.fail_at:
            raise KeyboardInterrupt  # the run stops here, as a user's Ctrl-C would
        self.trained.append(steps)
        return steps

    def score(self, steps):
        return {"thorax": {"heart": self.script[steps], "aorta": self.script[steps], "x": None}}

    def trainer(self):
        return Trainer(self.train, self.score)


def test_the_curve_doubles_until_a_doubling_adds_less_than_the_tolerance(tmp_path):
    fake = Scripted()
    path = curve_path(tmp_path, "upper_bound", "thorax")
    said = []
    doc = learning_curve(path, IDENTITY, fake.trainer(), CurveSettings(250, 5, 0.03), said.append)
    # 2000 -> 4000 adds 0.003 < 0.03; 1000 -> 2000 adds 0.021 < 0.03: plateau at 1000
    assert fake.trained == [250, 500, 1000, 2000]
    assert doc["plateau_steps"] == 1000
    stored = json.loads(path.read_text())
    assert stored == doc
    assert [p["steps"] for p in stored["points"]] == [250, 500, 1000, 2000]
    assert stored["points"][2]["mean_dice"] == pytest.approx(0.741)
    assert stored["points"][2]["dice"]["thorax"]["x"] is None  # unscored: not averaged
    assert all(p["cpu_seconds"] >= 0 and p["wall_seconds"] >= 0 for p in stored["points"])
    assert any("next 500 steps, about 0 s" in s for s in said)  # time left is estimated
    assert plateau_budgets(tmp_path) == {"thorax": 1000}
    png = plot_curve(doc, path.with_suffix(".png"))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_smaller_tolerance_goes_further_and_stops_at_max_doublings(tmp_path):
    fake = Scripted()
    path = curve_path(tmp_path, "upper_bound", "thorax")
    doc = learning_curve(path, IDENTITY, fake.trainer(), CurveSettings(250, 3, 0.0001), print)
    assert fake.trained == [250, 500, 1000, 2000]  # 3 doublings at most
    assert doc["plateau_steps"] is None
    assert plateau_budgets(tmp_path) == {}  # no plateau: left out


def test_a_rerun_trains_only_the_missing_budgets(tmp_path):
    path = curve_path(tmp_path, "upper_bound", "thorax")
    settings = CurveSettings(250, 5, 0.03)
    with pytest.raises(KeyboardInterrupt):
        learning_curve(path, IDENTITY, Scripted(fail_at=1000).trainer(), settings, print)
    assert [p["steps"] for p in json.loads(path.read_text())["points"]] == [250, 500]
    again = Scripted()
    doc = learning_curve(path, IDENTITY, again.trainer(), settings, print)
    assert again.trained == [1000, 2000]  # 250 and 500 were kept
    assert doc["plateau_steps"] == 1000
    done = Scripted()
    assert learning_curve(path, IDENTITY, done.trainer(), settings, print) == doc
    assert done.trained == []  # a finished curve trains nothing


def test_a_single_budget_trained_into_a_finished_curve_keeps_its_plateau(tmp_path):
    path = curve_path(tmp_path, "upper_bound", "thorax")
    learning_curve(path, IDENTITY, Scripted().trainer(), CurveSettings(250, 5, 0.03), print)
    fake = Scripted({**SCRIPT, 3000: 0.764})
    doc = learning_curve(path, IDENTITY, fake.trainer(), CurveSettings(3000, 0, 0.03), print)
    assert fake.trained == [3000] and doc["plateau_steps"] == 1000
    assert [p["steps"] for p in doc["points"]] == [250, 500, 1000, 2000, 3000]


def test_a_curve_file_of_another_run_is_refused(tmp_path):
    path = curve_path(tmp_path, "upper_bound", "thorax")
    learning_curve(path, IDENTITY, Scripted().trainer(), CurveSettings(250, 1, 0.5), print)
    for other in ({**IDENTITY, "seed": 1}, {**IDENTITY, "settings": {"precision": "bf16"}}):
        with pytest.raises(ValueError, match="use another --out"):
            learning_curve(path, other, Scripted().trainer(), CurveSettings(250, 1, 0.5), print)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="expected a curve file"):
        plateau_budgets(tmp_path)


def test_durations_read_in_the_unit_that_fits():
    assert [duration(s) for s in (42, 408, 3 * 3600)] == ["42 s", "7 min", "3.0 h"]


def test_mean_dice_averages_tasks_over_their_scored_structures():
    dice = {"a": {"x": 0.2, "y": 0.4, "z": None}, "b": {"x": 0.9}}
    assert mean_dice(dice) == pytest.approx((0.3 + 0.9) / 2)
    with pytest.raises(ValueError, match="b: no structure"):
        mean_dice({"a": {"x": 0.5}, "b": {"x": None}})


def test_plateau_budgets_reads_only_the_method_asked(tmp_path):
    for method, task, steps in [("upper_bound", "a", 500), ("joint", "all", 2000)]:
        identity = {**IDENTITY, "method": method, "task": task}
        script = {s: min(s, steps) / 10_000 for s in (250, 500, 1000, 2000, 4000)}
        path = curve_path(tmp_path, method, task)
        learning_curve(path, identity, Scripted(script).trainer(), CurveSettings(250, 4, 1e-9))
    assert plateau_budgets(tmp_path) == {"a": 500}
    assert plateau_budgets(tmp_path, "joint") == {"all": 2000}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nowhere"], "--task"),
        (["--task", "all"], "--task"),  # only the joint model has an 'all' curve
        (["--task", "abdomen", "--method", "decoder"], "--catalog"),
        (["--task", "abdomen", "--set", "precision"], "--set 'precision': expected KEY=VALUE"),
        (["--task", "abdomen", "--set", "precison=bf16"], "did you mean 'precision'"),
        (["--task", "abdomen", "--set", "precision=fp8"], "precision 'fp8': expected one of"),
    ],
)
def test_curve_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["curve", "--scenario", "tiny", "-o", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and "error" in result.output
    assert not (tmp_path / "sites").exists()  # refused before writing anything


def test_the_machine_s_cpu_clock_counts_work_done_in_any_process():
    import subprocess
    import sys
    import time

    from simulations.benchmarks.curves import machine_cpu_seconds

    before, start = machine_cpu_seconds(), time.perf_counter()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)  # another process's work
    assert machine_cpu_seconds() - before >= 0.4
    assert time.perf_counter() - start >= 0.4
