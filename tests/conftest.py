"""Shared fixtures: the tiny scenario's phantoms, and a small model trained on them once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.bundle import Bundle, save_bundle
from core.data import Case, TaskDataset
from core.data.transforms import Augmentation, Preprocessing
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from core.training import TrainSettings, train_phase
from simulations.scenario import WrittenSite, load_scenario, write_scenario

TINY = EncoderConfig((8, 16, 32, 64))
PATCH = (32, 32, 32)


def tiny_model(
    structures: tuple[str, ...], seed: int = 0, task: str = "abdomen"
) -> ContinualSegmenter:
    """A 4-level model with one teacher decoder, initialised from ``seed``."""
    torch.manual_seed(seed)
    model = ContinualSegmenter(Encoder(TINY))
    model.add_decoder(task, Decoder(TINY.widths, Genotype.teacher(3), structures))
    return model


def native_prep(dataset: TaskDataset) -> Preprocessing:
    """Preprocessing at the phantoms' own spacing (no resampling)."""
    from core.data.nifti import read_header

    spacing = read_header(dataset.cases[0].image).spacing
    return Preprocessing(spacing_mm=spacing)


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WrittenSite]:
    """The tiny scenario written once: hospA and hospB (abdomen), hospC (chest), test sets."""
    written = write_scenario(load_scenario("tiny"), tmp_path_factory.mktemp("tiny"))
    return {site.site: site for site in written}


@pytest.fixture(scope="session")
def phantom_dataset(tiny_sites: dict[str, WrittenSite]) -> TaskDataset:
    """hospA's abdominal dataset: 32^3 phantoms with liver, spleen and kidneys labelled."""
    return tiny_sites["hospA"].dataset


def abdomen_cases(tiny_sites: dict[str, WrittenSite]) -> list[Case]:
    """The training cases of both abdominal sites (same task, same label table)."""
    return [*tiny_sites["hospA"].dataset.cases, *tiny_sites["hospB"].dataset.cases]


@pytest.fixture(scope="session")
def trained_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_sites: dict[str, WrittenSite]
) -> Path:
    """A bundle whose one decoder was trained briefly (it segments at least the liver)."""
    dataset = tiny_sites["hospA"].dataset
    model = tiny_model(dataset.labels.structures, seed=1)
    prep = native_prep(dataset)
    settings = TrainSettings(steps=120, augmentation=Augmentation(patch_size=PATCH), progress=False)
    train_phase(
        model,
        "abdomen",
        dataset.labels,
        abdomen_cases(tiny_sites),
        [],
        prep,
        settings,
        train_encoder=True,
    )
    model.encoder.freeze()
    folder = tmp_path_factory.mktemp("bundle")
    save_bundle(Bundle(model, prep, PATCH, {"abdomen": {"sites": ["hospA", "hospB"]}}), folder)
    return folder


BENCHMARKED = ("continual", "naive_merge", "upper_bound", "joint", "finetune", "lwf", "mib")
"""The quick benchmark's methods: every one but ``no_trim``, a second Flower run of the same
code with ``trim = false`` (its lifecycle is tested without an engine)."""


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick benchmark of the tiny scenario; its ``continual/`` run is a full simulation."""
    from simulations.benchmark import run_benchmark

    out = tmp_path_factory.mktemp("bench")
    run_benchmark(load_scenario("tiny"), out, quick=True, methods=BENCHMARKED, say=lambda _: None)
    return out


TRAINING_FIXTURES = {"trained_bundle", "tiny_benchmark"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a trained model or the quick benchmark is slow, whatever it says."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
