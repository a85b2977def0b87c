import json

import pytest

from core.phases import DISTILL, TEACHER
from simulations.benchmarks.budget import (
    budget_steps,
    central_steps,
    parse_plateaus,
    plateau_scenario,
    reuse_result,
    stamp,
)
from simulations.scenario import PER_TASK, ScenarioError, load_scenario, with_federation

PLATEAU = {"wholebody": 2000, "head_neck": 1000, "thorax": 1000, "abdomen_tumor": 500}


def test_central_methods_get_the_steps_of_all_a_task_s_sites():
    default = load_scenario("default")
    plan = default.plan
    # training rounds x local steps + distillation rounds x steps, at each of the task's
    # sites: wholebody 12 x 50 + 5 x 50 at hosp_a, hosp_b and hosp_c; thorax 6 x 85 + 2 x 75
    assert budget_steps(plan, "wholebody", 3) == 3 * 850
    assert budget_steps(plan, "thorax", 1) == 660
    steps = central_steps(default, plan, "scenario", {})
    assert steps == {"wholebody": 2550, "head_neck": 1920, "thorax": 660, "abdomen_tumor": 810}


def test_plateau_budgets_scale_each_task_s_federated_rounds():
    default = load_scenario("default")
    scaled = plateau_scenario(default, PLATEAU)
    plan = scaled.plan
    for task in default.tasks:
        sites = len(default.sites_of(task.name))
        training, own = plan.task(task.name).of(TEACHER), default.plan.task(task.name)
        assert training.steps == own.of(TEACHER).steps  # local steps kept; rounds scaled
        federated = training.rounds * training.steps * sites
        assert abs(federated - PLATEAU[task.name]) <= training.steps * sites / 2
        # the student keeps its share of the scenario's distillation rounds per training round
        distill, share = plan.task(task.name).of(DISTILL), own.of(DISTILL).rounds
        assert distill.rounds == max(1, round(share * training.rounds / own.of(TEACHER).rounds))
    assert plan.task("wholebody").of(TEACHER).rounds == 13  # 2000 / (50 x 3 sites)
    assert plan.task("thorax").of(TEACHER).rounds == 12  # 1000 / 85
    assert plan.task("abdomen_tumor").of(DISTILL).rounds == 3  # 6 training rounds
    # every other setting is the scenario's own
    before, after = default.plan, plan
    assert before.model == after.model and before.training == after.training
    assert plan.task("thorax").of(DISTILL).steps == 75
    assert central_steps(scaled, plan, "plateau", PLATEAU) == PLATEAU
    assert default.plan == load_scenario("default").plan  # the scenario itself is untouched


def test_plateaus_given_by_hand_are_parsed_and_bounded():
    items = [f"{task}={steps}" for task, steps in PLATEAU.items()]
    assert parse_plateaus(items) == PLATEAU
    assert parse_plateaus([" thorax = 20 "]) == {"thorax": 20}
    for bad in ("thorax", "thorax=", "=20", "thorax=0", "thorax=-5", "thorax=1.5", "thorax=1e9"):
        with pytest.raises(ValueError, match="expected TASK=STEPS"):
            parse_plateaus([bad])
    with pytest.raises(ValueError, match=r"\['spine'\]: not tasks of default"):
        plateau_scenario(load_scenario("default"), {**PLATEAU, "spine": 100})


def test_a_task_without_a_plateau_is_refused():
    default = load_scenario("default")
    partial = {k: v for k, v in PLATEAU.items() if k != "thorax"}
    with pytest.raises(ValueError, match="thorax"):
        plateau_scenario(default, partial)
    with pytest.raises(ValueError, match="thorax"):
        central_steps(default, default.plan, "plateau", partial)


def test_per_task_federation_tables_override_one_task_and_are_checked():
    tiny = load_scenario("tiny")
    plan = with_federation(tiny, {PER_TASK: {"chest": {"rounds": 7, "lr": 0.02}}}).plan
    assert plan.task("chest").of(TEACHER).rounds == 7 and plan.task("chest").optimiser.lr == 0.02
    assert plan.task("abdomen").of(TEACHER).rounds == 2  # the scenario's
    for bad, message in [
        ({"lungs": {"rounds": 2}}, "unknown key 'lungs'"),
        ({"chest": {"round": 2}}, "did you mean 'rounds'"),
        ({"chest": 3}, "table of tables"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            with_federation(tiny, {PER_TASK: bad})


def test_a_kept_result_of_other_step_counts_is_refused(tmp_path):
    path = tmp_path / "lwf.json"
    path.write_text(json.dumps({"method": "lwf", "steps_per_task": {"a": 250}}))
    assert reuse_result(path, {"a": 250}, "scenario")["method"] == "lwf"  # kept before budgets
    with pytest.raises(ValueError, match="use another --out"):
        reuse_result(path, {"a": 250}, "plateau")
    with pytest.raises(ValueError, match="use another --out"):
        reuse_result(path, {"a": 1000}, "scenario")
    with pytest.raises(ValueError, match=r"settings \{\}, not .* settings \{'precision': 'bf16'\}"):
        reuse_result(path, {"a": 250}, "scenario", {"precision": "bf16"})
    kept = stamp({"method": "lwf"}, {"a": 250}, "scenario", {"precision": "bf16"})
    path.write_text(json.dumps(kept))
    assert reuse_result(path, {"a": 250}, "scenario", {"precision": "bf16"}) == kept
