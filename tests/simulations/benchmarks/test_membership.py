import copy
import json

import pytest
from typer.testing import CliRunner

from core.model import Decoder, Genotype
from csfl import app
from simulations.benchmarks.membership import (
    case_losses,
    format_audit,
    loss_attack,
)
from simulations.scenario import load_scenario
from tests.models import PATCH, TINY, abdomen_cases, held_out_set, native_prep


def test_an_attack_that_ranks_every_member_first_has_auc_one():
    attack = loss_attack([0.1, 0.2, 0.3], [0.4, 0.5])
    assert attack.auc == pytest.approx(1.0) and attack.tpr_at_low_fpr == 1.0
    assert (attack.members, attack.held_out) == (3, 2)
    assert (attack.member_loss, attack.held_out_loss) == (0.2, 0.45)


def test_an_attack_that_ranks_every_member_last_has_auc_zero():
    attack = loss_attack([0.4, 0.5], [0.1, 0.2, 0.3])
    assert attack.auc == pytest.approx(0.0) and attack.tpr_at_low_fpr == 0.0


def test_the_tpr_is_read_where_at_most_one_percent_of_held_out_cases_are_named():
    held_out = [float(i) for i in range(200)]  # 1% of 200: the two lowest losses may be named
    members = [0.5, 1.5, 10.0]  # only 0.5 lies below the third-lowest held-out loss
    attack = loss_attack(members, held_out)
    assert attack.tpr_at_low_fpr == pytest.approx(2 / 3)  # 0.5 and 1.5: below 2.0
    # with fewer than 100 held-out cases, no false positive at all is allowed
    assert loss_attack([0.5, 1.5], [1.0, 2.0, 3.0]).tpr_at_low_fpr == 0.5


def test_interleaved_losses_give_an_auc_of_one_half():
    attack = loss_attack([1.0, 3.0], [2.0, 2.0])
    assert attack.auc == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("members", "held_out", "message"),
    [([], [1.0], "at least one member"), ([1.0], [float("nan")], "not finite")],
)
def test_an_attack_without_cases_or_with_a_bad_loss_is_refused(members, held_out, message):
    with pytest.raises(ValueError, match=message):
        loss_attack(members, held_out)


def test_a_trained_decoder_gives_its_training_cases_a_lower_loss_than_a_fresh_one(
    trained_run, tiny_sites
):
    from core.bundle import load_bundle

    bundle = load_bundle(trained_run.bundle)
    dataset = tiny_sites["hospA"].dataset
    trained = bundle.model.decoder("abdomen")
    fresh = Decoder(TINY.widths, Genotype.teacher(3), trained.structures)
    cases = abdomen_cases(tiny_sites)[:3]
    prep = native_prep(dataset)
    seen = case_losses(bundle.model.encoder, trained, cases, dataset.labels, prep, PATCH)
    unseen = case_losses(bundle.model.encoder, fresh, cases, dataset.labels, prep, PATCH)
    assert len(seen) == len(unseen) == 3
    assert max(seen) < min(unseen)
    held_out = held_out_set(dataset).cases[:1]
    again = case_losses(
        bundle.model.encoder, copy.deepcopy(trained), held_out, dataset.labels, prep, PATCH
    )
    assert len(again) == 1 and again[0] > 0


def test_the_audit_attacks_what_the_coordinator_and_the_bundle_hold(tiny_benchmark, tmp_path):
    run, tiny = tiny_benchmark / "continual", load_scenario("tiny")
    args = ["privacy-audit", "--scenario", "tiny", "--out", str(run)]
    result = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "audit.json")])
    assert result.exit_code == 0 and "| chest | no DP | bundle |" in result.output
    report = json.loads((tmp_path / "audit.json").read_text())
    assert list(report) == ["abdomen", "chest"]
    for task in tiny.tasks:
        row = report[task.name]
        assert row["privacy"] is None  # the quick benchmark trains without DP
        for target in ("coordinator", "bundle"):
            attack = row[target]
            assert attack["held_out"] == task.test_cases
            assert attack["members"] > 0 and 0.0 <= attack["auc"] <= 1.0
    # the trimmed student is not the decoder the coordinator received: other losses
    assert report["chest"]["bundle"] != report["chest"]["coordinator"]
    assert format_audit(report).count("| abdomen | no DP |") == 2


def test_the_audit_of_a_folder_without_a_run_is_one_line_and_exit_code_2(tmp_path):
    result = CliRunner().invoke(
        app, ["privacy-audit", "--scenario", "tiny", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert str(tmp_path) in result.output and len(result.output.strip().splitlines()) == 1
