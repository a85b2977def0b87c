import json
import tomllib

import pytest

from server.catalog import Catalog
from server.plan import parse_plan
from simulations.run import finished_stages, site_slots, to_toml
from simulations.scenario import ScenarioError, load_scenario, parse_settings, with_federation


def test_every_scenario_becomes_a_valid_plan():
    for name in ("tiny", "default", "wholebody143"):
        scenario = load_scenario(name)
        plan = parse_plan(tomllib.loads(to_toml(scenario.plan.document())), name)
        assert plan == scenario.plan  # the plan the simulation's server reads is the scenario's
        assert [t.name for t in plan.tasks] == [t.name for t in scenario.tasks]
        for task in plan.tasks:
            assert set(task.sites or ()) == {s.name for s in scenario.sites_of(task.name)}
            assert task.structures == scenario.task(task.name).structures
        assert plan.patch[0] % plan.encoder.divisor == 0


def test_a_restart_keeps_only_the_stages_that_finished(tmp_path, monkeypatch):
    tiny = load_scenario("tiny")
    assert finished_stages(tmp_path, tiny) == {}  # nothing written yet
    (tmp_path / "results.json").write_text("{not json")
    assert finished_stages(tmp_path, tiny) == {}
    first = {"stage": 1, "tasks": ["abdomen"], "sites": ["hospA", "hospB"], "dice": {}}
    doc = {"scenario": "tiny", "stages": [first, {**first, "stage": 2, "tasks": ["abdomen"]}]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert finished_stages(tmp_path, tiny) == {}  # the catalog holds no task yet
    monkeypatch.setattr(Catalog, "has_task", lambda self, name: name in ("abdomen", "chest"))
    assert finished_stages(tmp_path, tiny) == {1: first}  # stage 2 lists other tasks
    assert finished_stages(tmp_path, load_scenario("default")) == {}  # another scenario's


def test_set_replaces_federation_keys_with_toml_values():
    settings = ["server_lr=3", "precision=bf16", 'aggregation="robust"', "trim=false"]
    spec = with_federation(load_scenario("tiny"), parse_settings(settings))
    plan, kept = spec.plan, load_scenario("tiny").plan
    assert plan.training.precision == "bf16" and plan.tasks[0].aggregation.server_lr == 3.0
    assert plan.tasks[0].aggregation.aggregation == "robust" and not plan.tasks[0].section.trim
    assert kept.tasks[0].aggregation.server_lr == 1.0 and kept.tasks[0].section.trim  # kept
    with pytest.raises(ScenarioError, match="did you mean 'server_lr'"):
        with_federation(load_scenario("tiny"), {"server_rl": 3})


@pytest.mark.parametrize(
    ("cores", "sites", "slots"),
    [(2, 1, (2, 1)), (2, 2, (1, 2)), (2, 3, (1, 3)), (2, 9, (1, 4)), (16, 3, (5, 3))],
)
def test_a_stages_sites_share_the_cores_up_to_two_a_core(cores, sites, slots):
    assert site_slots(cores, sites) == slots
