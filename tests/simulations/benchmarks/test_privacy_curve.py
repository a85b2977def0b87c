import pytest

from core.local.private import spent_epsilon
from simulations.benchmarks.privacy_curve import (
    format_curve,
    noise_multiplier,
    planned_runs,
    privacy_curve,
    private_plan,
    setting_name,
)
from simulations.scenario import load_scenario, with_federation


def test_each_task_s_noise_spends_the_target_over_its_phases_at_its_smallest_site():
    scenario = load_scenario("privacy")
    private = private_plan(scenario, 3.0)
    noise = {}
    for task in private.tasks:
        smallest = min(s.cases for s in scenario.sites_of(task.name))
        kept = smallest - round(smallest * private.training.val_fraction)
        runs = planned_runs(private, task, kept)
        assert len(runs) == 1  # trimming and calibration off: the training rounds alone
        noise[task.name] = sigma = task.privacy.noise_multiplier
        spent = spent_epsilon([(sigma, q, n) for q, n in runs], task.privacy.delta)
        assert 2.9 <= spent <= 3.0  # the bisection stops within 0.5% of the noise
        assert task.privacy.epsilon_budget == 3.0  # and the site refuses to go past it
        assert not scenario.plan.task(task.name).privacy.on
    # the small site samples a larger share of its patients, so it needs more noise
    assert noise["pelvis"] > 3 * noise["abdomen"]
    # a task that also searches, distils and calibrates spends its epsilon over more runs:
    # the search's two halves of the patients, distillation, calibration
    trimmed = with_federation(scenario, {"trim": True, "calibrate": True}).plan
    abdomen = trimmed.task("abdomen")
    runs = planned_runs(trimmed, abdomen, 90)
    assert [n for _, n in runs] == [400, 50, 35, 400, 50]  # 8 x 50; 50, 35 after the warm-up
    assert [q for q, _ in runs] == [8 / 90, 8 / 45, 8 / 45, 8 / 90, 8 / 90]
    sigma = noise_multiplier(3.0, abdomen.privacy.delta, runs)
    assert sigma > noise["abdomen"]
    assert 2.9 <= spent_epsilon([(sigma, q, n) for q, n in runs], abdomen.privacy.delta) <= 3.0


def test_a_plan_that_a_private_task_refuses_is_refused_before_any_run(tmp_path):
    scenario = with_federation(load_scenario("privacy"), {"proximal_mu": 0.01})
    with pytest.raises(ValueError, match="proximal_mu"):
        privacy_curve(scenario, [8.0], tmp_path / "curve")
    assert not (tmp_path / "curve").exists()


def test_the_curve_table_has_a_row_per_setting_and_task():
    attack = {"auc": 0.75, "tpr_at_low_fpr": 0.1, "members": 11, "held_out": 40}
    audit = {"privacy": None, "coordinator": attack, "bundle": attack}
    private = {**audit, "privacy": {"delta": 1e-5, "epsilon": {"a": 2.5, "b": 2.9}}}
    rows = {
        setting_name(None): {
            "dice": {"t": {"decoder": 0.8, "merged": None}},
            "seconds": 120.0,
            "audit": {"t": audit},
        },
        setting_name(3.0): {
            "dice": {"t": {"decoder": 0.7, "merged": 0.69}},
            "seconds": 60.0,
            "audit": {"t": private},
        },
    }
    table = format_curve(rows).splitlines()
    assert table[2] == "| no_dp | t | no DP | 0.800 | - | 0.75 / 0.75 | 0.10 | 11 | 2.0 |"
    assert table[3].startswith("| epsilon_3 | t | 2.90 | 0.700 | 0.690 |")


def test_a_public_task_trains_without_dp_in_the_private_settings():
    scenario = load_scenario("privacy")
    plan = private_plan(scenario, 8.0, public=("abdomen",))
    assert [t.name for t in plan.tasks if t.privacy.on] == ["chest", "pelvis"]
    assert setting_name(8.0, ("abdomen",)) == "epsilon_8_public_abdomen"
    with pytest.raises(ValueError, match=r"public tasks \['liver'\]: expected some of"):
        private_plan(scenario, 8.0, public=("liver",))
