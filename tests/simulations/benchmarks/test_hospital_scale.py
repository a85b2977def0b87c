"""``csfl profile --scale``: nnU-Net v2's plan and predictor (where installed), the bundle."""

import json

import nibabel as nib
import pytest

from core.model import Genotype
from core.model.cost import genotype_parameters
from core.phases.search import budget_parameters
from simulations.benchmarks.hospital_scale import (
    ScaleSettings,
    check_scale,
    stand_in_student,
    synthetic_ct,
)
from simulations.benchmarks.nnunet_side import CONFIGURATION, predict, write_model
from simulations.scenario import load_scenario


def test_the_plan_has_the_scenario_network_and_one_label_per_structure(tmp_path):
    plan = load_scenario("wholebody143").plan
    folder = write_model("wholebody143", tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    arch = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == list(plan.encoder.widths)
    assert plans["configurations"][CONFIGURATION]["patch_size"] == list(plan.patch)
    assert len(labels) == 1 + len({s for t in plan.tasks for s in t.structures}) == 151
    assert sorted(labels.values()) == list(range(151))


def test_an_unknown_approach_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="approaches \\['nnunet_v1'\\]"):
        check_scale(ScaleSettings(scenario="tiny", approaches=("nnunet_v1",)))


@pytest.mark.parametrize("approach", ["nnunet", "nnunet_resampled"])
def test_nnunet_segments_the_ct_on_its_own_grid(tmp_path, approach):
    pytest.importorskip("nnunetv2")
    model = write_model("tiny", tmp_path / "model")
    ct = synthetic_ct(tmp_path / "ct.nii", (40, 36, 30), (2.0, 2.0, 3.0))
    (tmp_path / "out").mkdir()
    labels = nib.load(predict(approach, model, ct, tmp_path / "out"))
    assert labels.shape == (40, 36, 30)
    assert abs(labels.affine - nib.load(ct).affine).max() < 1e-3


def test_the_trimmed_stand_in_is_the_widest_uniform_student_within_the_budget():
    widths = load_scenario("wholebody143").plan.encoder.widths
    student = stand_in_student(widths, 20, 0.25)
    size = genotype_parameters(widths, student, 20)
    assert size <= budget_parameters(widths, 20, 0.25)
    wider = Genotype.uniform(student.stages[0].op, 1.0, len(widths) - 1)
    assert genotype_parameters(widths, wider, 20) > size  # the budget bound it
    with pytest.raises(ValueError, match="decoders 'half'"):
        check_scale(ScaleSettings(scenario="tiny", decoders="half"))
