import pytest

from core.local.private import sample_rate, spent_epsilon
from core.phases import TEACHER
from simulations.benchmarks.privacy_curve import (
    format_curve,
    privacy_curve,
    private_plan,
    setting_name,
)
from simulations.scenario import load_scenario, with_federation


def test_each_task_s_noise_spends_the_target_at_its_smallest_site():
    scenario = load_scenario("privacy")
    plan = private_plan(scenario, 3.0)
    for task in plan.tasks:
        training = task.of(TEACHER)
        smallest = min(s.cases for s in scenario.sites_of(task.name))
        kept = smallest - round(smallest * plan.training.val_fraction)
        rate = sample_rate(plan.training.batch_size, kept)
        steps = training.rounds * training.steps
        spent = spent_epsilon(training.dp_noise_multiplier, rate, steps, training.dp_delta)
        assert 2.9 <= spent <= 3.0  # Opacus's search stops within 1% below the target
        assert training.dp_epsilon == 3.0  # and the site refuses to go past it
    # the small site samples a larger share of its patients, so it needs more noise
    noise = {t.name: t.of(TEACHER).dp_noise_multiplier for t in plan.tasks}
    assert noise["pelvis"] > 3 * noise["abdomen"]


def test_a_plan_that_trims_a_private_task_is_refused_before_any_run(tmp_path):
    scenario = with_federation(load_scenario("privacy"), {"trim": True})
    with pytest.raises(ValueError, match="trim = false"):
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
