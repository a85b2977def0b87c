import copy
import dataclasses

import pytest
import torch

from core.data.transforms import Augmentation
from core.local.training import LocalTrainSettings
from core.model import EncoderConfig
from simulations.benchmarks import shared_stage
from simulations.benchmarks.baselines import sequential
from simulations.benchmarks.shared_stage import FOLDER, first_stage, settings_key
from simulations.task_data import TaskData
from tests.models import abdomen_cases, held_out_set, native_prep

SMALL = EncoderConfig((4, 8, 16))
PATCH = (16, 16, 16)
ABDOMEN = ("liver", "spleen", "kidney_left", "kidney_right")
CHEST = ("heart", "lung_left", "lung_right")


def _settings(steps, seed=0):
    return LocalTrainSettings(
        steps=steps, augmentation=Augmentation(patch_size=PATCH), progress=False, seed=seed
    )


@pytest.fixture(scope="module")
def tasks(tiny_sites):
    a, c = tiny_sites["hospA"].dataset, tiny_sites["hospC"].dataset
    ta, tc = held_out_set(a), held_out_set(c)
    abdomen = TaskData(
        "abdomen", ABDOMEN, a.labels, abdomen_cases(tiny_sites), list(ta.cases), ta.labels
    )
    chest = TaskData("chest", CHEST, c.labels, list(c.cases), list(tc.cases), tc.labels, steps=1)
    return abdomen, chest, native_prep(a)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_key_follows_every_setting_of_the_first_stage(tasks):
    abdomen, _, prep = tasks
    key = settings_key(abdomen, SMALL, prep, _settings(2))
    assert key == settings_key(abdomen, SMALL, prep, _settings(2))
    assert key == settings_key(
        abdomen, SMALL, prep, dataclasses.replace(_settings(2), progress=True)
    )
    assert key != settings_key(abdomen, SMALL, prep, _settings(3))
    assert key != settings_key(abdomen, SMALL, prep, _settings(2, seed=1))
    assert key != settings_key(dataclasses.replace(abdomen, steps=5), SMALL, prep, _settings(2))
    assert key != settings_key(abdomen, EncoderConfig((4, 8, 16, 32)), prep, _settings(2))
    fewer = dataclasses.replace(abdomen, train_cases=abdomen.train_cases[:-1])
    assert key != settings_key(fewer, SMALL, prep, _settings(2))


@pytest.mark.slow  # trains the first stage twice for 2 steps (once inside sequential)
def test_the_first_stage_is_trained_once_and_is_every_method_s_first_stage(
    tasks, tmp_path, monkeypatch
):
    abdomen, chest, prep = tasks
    settings = _settings(2)
    trained, seconds = first_stage(tmp_path, abdomen, SMALL, prep, settings)
    assert seconds > 0 and len(list((tmp_path / FOLDER).glob("*.safetensors"))) == 1

    # sequential's own first stage, trained from scratch, is the very same model
    stage0 = []
    sequential(
        "lwf",
        [abdomen, chest],
        SMALL,
        prep,
        settings,
        on_stage=lambda k, m: stage0.append(copy.deepcopy(m.state_dict())) if k == 0 else None,
    )
    assert stage0 and all(torch.equal(v, trained.state_dict()[k]) for k, v in stage0[0].items())

    def no_training(*args, **kwargs):
        raise AssertionError("the kept first stage must be reused, not trained again")

    monkeypatch.setattr(shared_stage, "upper_bound", no_training)
    kept, kept_seconds = first_stage(tmp_path, abdomen, SMALL, prep, settings)
    assert _same(kept, trained) and kept_seconds == pytest.approx(seconds, abs=1e-3)
    # a method started from it does not train it again and leaves it untouched
    before = {k: v.clone() for k, v in kept.state_dict().items()}
    grown = sequential("mib", [abdomen, chest], SMALL, prep, settings, first=kept)
    assert grown.classes == (*ABDOMEN, *CHEST)
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in before.items())


def test_a_first_stage_of_another_task_is_refused(tasks):
    abdomen, chest, prep = tasks
    from simulations.benchmarks.baselines import GrowingSegmenter

    with pytest.raises(ValueError, match="first stage"):
        sequential(
            "finetune",
            [abdomen, chest],
            SMALL,
            prep,
            _settings(1),
            first=GrowingSegmenter(SMALL, CHEST),
        )
