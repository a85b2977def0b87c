"""A small model and the tiny scenario's cases, for tests (the fixtures are in conftest)."""

from __future__ import annotations

import torch

from core.data import Case, TaskDataset, open_dataset
from core.data.nifti import read_header
from core.data.transforms import Preprocessing
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from simulations.scenario import TEST_FOLDER
from simulations.sites import WrittenSite

TINY = EncoderConfig((8, 16, 32, 64))
PATCH = (24, 24, 24)
TRAINED_STEPS = 200


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
    spacing = read_header(dataset.cases[0].image).spacing
    return Preprocessing(spacing_mm=spacing)


def abdomen_cases(tiny_sites: dict[str, WrittenSite]) -> list[Case]:
    """The training cases of both abdominal sites (same task, same label table)."""
    return [*tiny_sites["hospA"].dataset.cases, *tiny_sites["hospB"].dataset.cases]


def held_out_set(dataset: TaskDataset) -> TaskDataset:
    """The held-out test set that ``write_scenario`` put beside a site's dataset."""
    return open_dataset(dataset.root.parent.parent / TEST_FOLDER / dataset.root.name)
