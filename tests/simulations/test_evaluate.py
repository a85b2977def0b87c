"""The evaluation module on 16^3 synthetic volumes, with networks that predict one class."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.bundle import Bundle, load_bundle, save_bundle
from core.data.transforms import Preprocessing
from core.inference import volume_outputs
from core.merge import Calibration, MergeSettings
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from simulations.benchmarks.merge_report import COMPARED, format_merge_report, merge_report
from simulations.benchmarks.rebundle import rebundle
from simulations.evaluate import (
    LabelMap,
    case_truth,
    evaluate_catalog,
    merged_map,
    score_bundle,
    score_model,
    task_labels,
)
from simulations.scenario import Scenario, SiteSpec, TaskSpec, federation_plan
from simulations.task_data import TaskData
from tests.builders import SHAPE, nnunet_dataset

SMALL = EncoderConfig((4, 8, 16))
ROI = SHAPE
NATIVE = Preprocessing(spacing_mm=(2.0, 2.0, 2.0))  # the builders' own grid: no resampling
CUBE = 3 * 3 * 6  # voxels of each labelled cube (tests/builders.py)
ALL_LIVER = 2 * CUBE / (CUBE + 16**3)  # Dice of liver when every voxel is called liver
HIGHEST = MergeSettings(rule="highest_probability")


def _decoder(structures, winner):
    """A teacher decoder whose organ head calls every voxel ``winner``."""
    decoder = Decoder(SMALL.widths, Genotype.teacher(2), structures)
    with torch.no_grad():
        decoder.organ_head.weight.zero_()
        decoder.organ_head.bias.zero_()
        decoder.organ_head.bias[structures.index(winner) + 1] = 5.0
    return decoder


def _model(**decoders):
    model = ContinualSegmenter(Encoder(SMALL))
    for task, (structures, winner) in decoders.items():
        model.add_decoder(task, _decoder(structures, winner))
    return model


def _task(dataset, name="abdomen"):
    structures = dataset.labels.structures
    return TaskData(name, structures, dataset.labels, [], list(dataset.cases), dataset.labels)


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory):
    root = tmp_path_factory.mktemp("test") / "Dataset001_abdomen"
    return _task(nnunet_dataset(root, n_cases=1, structures=("liver", "spleen")))


@pytest.fixture(scope="module")
def tumour(abdomen):
    root = abdomen.test_cases[0].image.parent.parent.parent / "Dataset002_tumour"
    return _task(nnunet_dataset(root, n_cases=1, structures=("liver", "liver_tumor")), "tumour")


class _Constant(nn.Module):
    """A baseline-like model: one head over ``classes``; predicts ``winner`` everywhere."""

    def __init__(self, classes, winner):
        super().__init__()
        self.classes, self.winner = classes, winner
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], len(self.classes) + 1, *x.shape[2:])
        logits[:, self.classes.index(self.winner) + 1] = self.scale
        return logits


def test_a_unified_model_is_scored_through_the_task_s_own_decoder(abdomen):
    model = _model(abdomen=(("liver", "spleen"), "liver"), other=(("liver", "spleen"), "spleen"))
    model.train()
    scores = score_model(model, abdomen, NATIVE, ROI)
    assert scores.means("dice") == {"liver": pytest.approx(ALL_LIVER), "spleen": 0.0}
    assert set(scores.means("hd95")) == {"liver"}  # spleen is never predicted: no HD95
    assert model.training  # its mode is given back


def test_classes_a_task_does_not_label_count_as_background(abdomen):
    heart = score_model(_Constant(("heart", "liver", "spleen"), "heart"), abdomen, NATIVE, ROI)
    assert heart.means("dice") == {"liver": 0.0, "spleen": 0.0}
    liver = score_model(_Constant(("heart", "spleen", "liver"), "liver"), abdomen, NATIVE, ROI)
    assert liver.means("dice") == {"liver": pytest.approx(ALL_LIVER), "spleen": 0.0}
    with pytest.raises(TypeError, match="Linear"):
        score_model(nn.Linear(1, 1), abdomen, NATIVE, ROI)


def test_ground_truth_on_the_ct_grid_and_on_the_network_s(abdomen):
    case = abdomen.test_cases[0]
    ct = case_truth(case, abdomen, "ct", NATIVE)
    assert ct.labels.shape == (1, 1, *SHAPE) and ct.spacing == (2.0, 2.0, 2.0)
    assert [int((ct.labels == i).sum()) for i in (1, 2)] == [CUBE, CUBE]
    assert torch.equal(case_truth(case, abdomen, "network", NATIVE).labels, ct.labels)
    coarse = case_truth(case, abdomen, "network", Preprocessing(spacing_mm=(4.0, 4.0, 4.0)))
    assert coarse.labels.shape == (1, 1, 8, 8, 8) and coarse.spacing == (4.0, 4.0, 4.0)


def test_a_label_map_is_renumbered_to_the_task_s_structures():
    merged = LabelMap(torch.tensor([[[0, 1, 2, 3]]]), ["heart", "spleen", "liver"])
    assert task_labels(merged, ("liver", "spleen", "kidney_left")).tolist() == [[[0, 0, 2, 1]]]


def test_the_merged_map_of_an_earlier_stage_holds_its_decoders_only(abdomen):
    model = _model(abdomen=(("liver", "spleen"), "liver"), chest=(("heart",), "heart"))
    bundle = Bundle(model, NATIVE, ROI)
    outputs = volume_outputs(bundle, abdomen.test_cases[0].image)
    first = merged_map(bundle, outputs, HIGHEST, ["abdomen"])
    assert first.structures == ["liver", "spleen"] and bool((first.labels == 1).all())
    both = merged_map(bundle, outputs, HIGHEST)
    assert both.structures == ["liver", "spleen", "heart"]
    assert set(both.labels.unique().tolist()) <= {1, 3}


def test_a_bundle_is_scored_on_the_ct_grid_as_predict_returns_it(abdomen):
    bundle = Bundle(_model(abdomen=(("liver", "spleen"), "liver")), NATIVE, ROI, merge=HIGHEST)
    scores = score_bundle(bundle, abdomen)
    assert scores.means("dice") == {"liver": pytest.approx(ALL_LIVER), "spleen": 0.0}
    assert scores.hd95 == {}  # Dice only unless asked
    assert set(score_bundle(bundle, abdomen, hd95=True).means("hd95")) == {"liver"}


@pytest.fixture(scope="module")
def run(abdomen, tumour, tmp_path_factory):
    """A bundle of two overlapping decoders saved as a catalog's, and its scenario."""
    model = _model(
        abdomen=(("liver", "spleen"), "liver"), tumour=(("liver", "liver_tumor"), "liver_tumor")
    )
    catalog = tmp_path_factory.mktemp("catalog")
    calibration = {  # validation Dice, and the abdominal decoder scored on the tumour CTs
        "abdomen": Calibration(skill={"liver": 0.8, "spleen": 0.6}),
        "tumour": Calibration(skill={"liver": 0.7}, peers={"abdomen": {"liver": 0.75}}),
    }
    bundle = Bundle(model, NATIVE, ROI, merge=HIGHEST, calibration=calibration)
    save_bundle(bundle, catalog / "bundle")
    tasks = (
        TaskSpec("abdomen", 1, ("liver", "spleen")),
        TaskSpec("tumour", 2, ("liver", "liver_tumor")),
    )
    sites = (SiteSpec("a", "abdomen", "abdomen", 1), SiteSpec("b", "tumour", "abdomen", 1))
    plan = federation_plan("synthetic", 0, tasks, sites, {})
    scenario = Scenario("synthetic", "", 32, 0, tasks, sites, {}, plan)
    return catalog, scenario, abdomen.test_cases[0].image.parent.parent.parent


def test_the_simulation_table_has_each_decoder_alone_and_the_merged_model(run):
    catalog, scenario, test_root = run
    dice = evaluate_catalog(SimpleNamespace(root=catalog), scenario, test_root)
    assert list(dice) == ["abdomen", "tumour"]
    assert dice["abdomen"]["liver"]["decoder"] == pytest.approx(ALL_LIVER)
    assert dice["abdomen"]["spleen"] == {"decoder": 0.0, "merged": 0.0}
    # alone, the tumour decoder calls everything a tumour; merged, both decoders are equally
    # sure and the tie goes to the first in name order (abdomen): liver everywhere
    assert dice["tumour"]["liver_tumor"] == {"decoder": pytest.approx(ALL_LIVER), "merged": 0.0}
    assert dice["tumour"]["liver"] == {"decoder": 0.0, "merged": pytest.approx(ALL_LIVER)}


def test_the_merge_report_splits_cases_and_scores_a_decoder_only_on_its_structures(run):
    catalog, scenario, test_root = run
    report = merge_report(catalog / "bundle", scenario, test_root)
    assert report["cases"] == {"healthy": 1, "tumour": 1}  # the tumour set has a lesion cube
    assert report["overlap"] == ["liver"]
    liver = report["dice"]["healthy"]["liver"]
    assert set(liver) == {*COMPARED, "alone:abdomen", "alone:tumour"}
    assert liver["alone:abdomen"] == pytest.approx(ALL_LIVER) and liver["alone:tumour"] == 0.0
    lesion = report["dice"]["tumour"]["liver_tumor"]
    assert "alone:abdomen" not in lesion and lesion["alone:tumour"] == pytest.approx(ALL_LIVER)
    assert report["skills"] == {
        "liver on abdomen's CTs": {"abdomen": 0.8},
        "liver on tumour's CTs": {"tumour": 0.7, "abdomen": 0.75},
    }
    assert "| liver on tumour's CTs | 0.75 | 0.70 |" in format_merge_report(report)


def test_a_run_is_rebundled_with_other_merge_weights_and_its_decoders_untouched(run, tmp_path):
    catalog, scenario, _ = run
    shutil.copytree(catalog / "bundle", tmp_path / "catalog" / "bundle")
    copy = load_bundle(rebundle(tmp_path, scenario, domain_weight=1.5, anomaly_weight=0.3))
    original = load_bundle(catalog / "bundle")
    assert (copy.merge.domain_weight, copy.merge.anomaly_weight) == (1.5, 0.3)
    assert copy.merge.rule == original.merge.rule
    for task, decoder in original.model.items():
        kept = copy.model.decoder(task).state_dict()
        assert all(torch.equal(kept[k], v) for k, v in decoder.state_dict().items())
    with pytest.raises(ValueError, match="domain_weight"):
        rebundle(tmp_path, scenario, domain_weight=1000.0)
