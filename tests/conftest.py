"""Shared fixtures: a small trained model bundle on demo phantoms (trained once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.bundle import Bundle, save_bundle
from core.data import TaskDataset, split_cases
from core.data.transforms import Augmentation, Preprocessing
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from core.training import Phase, TrainSettings, train_phase
from simulations.phantoms import write_demo_dataset

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
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> TaskDataset:
    """Six 32^3 demo phantoms with liver, spleen and kidneys labelled."""
    return write_demo_dataset(tmp_path_factory.mktemp("phantoms"), n_cases=6, size=32, seed=0)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, phantom_dataset: TaskDataset) -> Path:
    """A bundle whose one decoder was trained briefly (it segments at least the liver)."""
    model = tiny_model(phantom_dataset.labels.structures)
    prep = native_prep(phantom_dataset)
    train, _ = split_cases(phantom_dataset.cases, 0.34)
    settings = TrainSettings(steps=120, augmentation=Augmentation(patch_size=PATCH), progress=False)
    train_phase(model, "abdomen", Phase.BASE, phantom_dataset.labels, train, [], prep, settings)
    model.encoder.freeze()
    folder = tmp_path_factory.mktemp("bundle")
    save_bundle(Bundle(model, prep, PATCH, {"abdomen": {"sites": ["demo"]}}), folder)
    return folder
