import json

import pytest

from core.phases import BASE
from server.plan import parse_plan
from simulations.benchmarks.budget import plateau_scenario
from simulations.benchmarks.federated_joint import TASK, federated_joint, joint_scenario
from simulations.run import write_sites_once
from simulations.scenario import load_scenario, parse_settings, with_federation
from simulations.task_data import load_tasks


def test_one_task_over_every_structure_served_by_every_site_for_the_joint_budget():
    tiny = load_scenario("tiny")  # 3 sites, 10 local steps: 30 steps a round
    plan = tiny.plan
    spec = joint_scenario(tiny, plan, steps=100)
    (task,) = spec.tasks
    assert task.name == TASK and len(task.structures) == 7  # abdomen's 4, chest's 3
    assert {s.task for s in spec.sites} == {TASK} and len(spec.sites) == 3
    joint = spec.plan.tasks[0]
    assert joint.sites == tuple(s.name for s in spec.sites)
    assert joint.section.partial_labels and not joint.section.trim
    assert joint.of(BASE).rounds == 3  # round(100 / 30)
    one = joint_scenario(tiny, plan, 5).plan.tasks[0]
    assert one.of(BASE).rounds == 1  # at least one round


def test_the_plateau_budgets_per_task_rounds_give_way_to_the_joint_budget():
    tiny = load_scenario("tiny")
    plateau = plateau_scenario(tiny, {"abdomen": 300, "chest": 30})
    spec = joint_scenario(plateau, plateau.plan, steps=330)
    assert spec.plan.tasks[0].of(BASE).rounds == 11  # round(330 / 30)
    assert parse_plan(spec.plan.document()) == spec.plan  # what the simulation's server reads


@pytest.mark.slow  # one Flower simulation: one round at three sites, one local step each
def test_every_site_trains_the_joint_model_on_what_it_labels(tmp_path):
    small = parse_settings(["local_steps=1", "encoder_widths=[4, 8, 16]"])
    tiny = with_federation(load_scenario("tiny"), small)
    plan = tiny.plan
    sites = write_sites_once(tiny, tmp_path / "sites", print)
    tasks = load_tasks(tiny, sites, plan.training.val_fraction, plan.training.seed)
    run = tmp_path / "run"
    result, model = federated_joint(tiny, plan, tasks, 3, sites, run, print, cpus=1)
    assert list(result["stages"][-1]) == ["abdomen", "chest"]
    for task in tasks:  # each task scored on its own structures, by the one decoder
        assert list(result["stages"][-1][task.name]["dice"]) == list(task.structures)
    events = [json.loads(line) for line in (run / "catalog" / "journal.jsonl").open()]
    (base,) = [e for e in events if e["event"] == "round-end" and e["phase"] == "base"]
    assert sorted(base["sites"]) == ["hospA", "hospB", "hospC"] and not base["rejected"]
    (evaluate,) = [e for e in events if e["event"] == "phase-end" and e["phase"] == "evaluate"]
    assert set(evaluate["metrics"]["dice"]) == set(model.decoder(TASK).structures)
