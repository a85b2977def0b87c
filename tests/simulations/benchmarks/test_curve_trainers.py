import json

import pytest

from core.data.transforms import Preprocessing
from core.model import Encoder, EncoderConfig
from server.catalog import Catalog
from server.wire import RECEIVED, read_wire_log
from simulations.benchmarks.curve_trainers import run_curve
from simulations.benchmarks.curves import CurveSettings
from simulations.run import WIRE_LOG
from simulations.scenario import scenario_path

SMALL = (4, 8, 16)  # a smaller network than the tiny scenario's (same 32^3 patch)


@pytest.fixture(scope="module")
def small_tiny(tmp_path_factory):
    """The tiny scenario with a smaller network, and its phantoms written once."""
    folder = tmp_path_factory.mktemp("curve")
    text = scenario_path("tiny").read_text()
    text = text.replace("encoder_widths = [8, 16, 32, 64]", f"encoder_widths = {list(SMALL)}")
    assert str(list(SMALL)) in text
    (folder / "tiny.toml").write_text(text)
    return folder


@pytest.mark.slow  # three methods, 1 and 2 steps each, scored on the held-out cases
def test_every_curve_method_trains_budgets_and_scores_them(small_tiny):
    scenario, out = str(small_tiny / "tiny.toml"), small_tiny / "curves"
    settings = CurveSettings(start_steps=1, max_doublings=1, tolerance=1.0)  # stops at 2
    catalog = Catalog(small_tiny / "catalog")
    catalog.set_encoder(Encoder(EncoderConfig(SMALL)), Preprocessing(), (32, 32, 32))
    for method, task, scored, extra in [
        ("upper_bound", "chest", ["chest"], {}),
        ("joint", "all", ["abdomen", "chest"], {}),
        ("decoder", "chest", ["chest"], {"catalog": small_tiny / "catalog"}),
    ]:
        said = []
        doc = run_curve(scenario, method, task, out, settings, say=said.append, **extra)
        assert doc["plateau_steps"] == 1, method  # the doubling added less than 1.0
        stored = json.loads((out / f"curve-{method}-{task}.json").read_text())
        assert [p["steps"] for p in stored["points"]] == [1, 2]
        for point in stored["points"]:
            assert list(point["dice"]) == scored
            assert 0.0 <= point["mean_dice"] <= 1.0 and point["cpu_seconds"] > 0
        assert (out / f"curve-{method}-{task}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sites" / "test").is_dir()  # the phantoms, written once for all three


def test_the_decoder_curve_needs_a_catalog_with_an_encoder(small_tiny, tmp_path):
    with pytest.raises(ValueError, match="expected a catalog with a trained encoder"):
        run_curve(
            str(small_tiny / "tiny.toml"),
            "decoder",
            "chest",
            small_tiny / "curves",
            CurveSettings(1, 0),
            catalog=tmp_path / "nowhere",
        )
    assert not (tmp_path / "nowhere").exists()  # nothing is created where nothing was


@pytest.mark.parametrize(
    ("task", "steps", "message"),
    [
        ("chest", 20, "only the first task .'abdomen'.; later tasks' decoders: --method decoder"),
        ("abdomen", 30, "30 steps: a federated budget is whole rounds of 20 steps .2 sites x 10"),
    ],
)
def test_the_federated_curve_refuses_what_it_cannot_train(small_tiny, task, steps, message):
    scenario = str(small_tiny / "tiny.toml")
    with pytest.raises(ValueError, match=message):
        run_curve(scenario, "federated", task, small_tiny / "fed", CurveSettings(steps, 0))
    assert not list((small_tiny / "fed").glob("federated-*"))  # nothing started


@pytest.mark.slow  # one Flower simulation of one round (2 sites x 1 local step)
def test_the_federated_curve_trains_the_first_task_through_flower(small_tiny):
    """Also a real run of a private task: DP-SGD at both sites, their epsilon kept."""
    text = (small_tiny / "tiny.toml").read_text().replace("local_steps = 10", "local_steps = 1")
    private = "trim = false\ncalibrate = false\ndp_noise_multiplier = 1.0\ndp_delta = 0.01\n"
    (small_tiny / "fed.toml").write_text(text.replace("[federation]\n", "[federation]\n" + private))
    out = small_tiny / "fed-curve"
    doc = run_curve(str(small_tiny / "fed.toml"), "federated", "abdomen", out, CurveSettings(2, 0))
    (point,) = doc["points"]
    assert point["steps"] == 2 and list(point["dice"]) == ["abdomen"]
    assert point["cpu_seconds"] > point["wall_seconds"] * 0.2  # the machine's, Flower's included
    run = out / "federated-abdomen-2"
    events = [json.loads(line) for line in (run / "catalog" / "journal.jsonl").open()]
    rounds = [e for e in events if e["event"] == "round-end" and e["phase"] == "base"]
    assert [(e["round"], sorted(e["sites"])) for e in rounds] == [(1, ["hospA", "hospB"])]
    assert not any(e.get("phase") in ("search", "distill", "calibrate") for e in events)
    assert (run / "sites").resolve() == (out / "sites").resolve()  # the curve's phantoms
    (task,) = Catalog(run / "catalog").tasks()
    spent = task["versions"][-1]["provenance"]["privacy"]
    assert spent["delta"] == 0.01 and set(spent["epsilon"]) == {"hospA", "hospB"}
    assert all(e > 0 for e in spent["epsilon"].values())
    replies = [m for m in read_wire_log(run / WIRE_LOG) if m["direction"] == RECEIVED]
    trained = [m["content"]["metrics"]["metrics"] for m in replies if m["type"] == "train.base"]
    assert trained and all(r["epsilon"] > 0 and r["loss"] == 0.0 for r in trained)
