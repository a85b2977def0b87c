"""The methods a learning curve can train, each as a :class:`simulations.curves.Trainer`.

All use the scenario's plan (encoder, patch, preprocessing, optimiser, seed) as the
benchmark's central methods do (:func:`simulations.baselines.central_settings`), and
score by :func:`simulations.evaluate.score_model` on held-out cases.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.training import TrainSettings, train_phase
from server.catalog import INDEX, Catalog
from server.plan import Plan, parse_plan
from simulations.baselines import central_settings, upper_bound
from simulations.curves import ALL_TASKS, CurveMethod, Dice, Trainer
from simulations.evaluate import score_model
from simulations.joint import joint
from simulations.run import plan_document
from simulations.scenario import Scenario
from simulations.task_data import TaskData, load_tasks


def make_trainer(
    scenario: Scenario,
    method: CurveMethod,
    task: str,
    sites: Path,
    catalog: Path | None,
    progress: bool = False,
) -> Trainer[torch.nn.Module]:
    """The trainer of ``method`` on ``task`` of a scenario whose phantoms are in ``sites``.

    ``progress`` shows a progress bar while a budget trains.

    Raises:
        ValueError: for ``decoder`` without a catalog holding a trained encoder.
    """
    plan = parse_plan(plan_document(scenario), f"scenario {scenario.name}")
    tasks = load_tasks(scenario, sites, plan.training.val_fraction, plan.training.seed)
    scored = tasks if task == ALL_TASKS else [t for t in tasks if t.name == task]
    settings = central_settings(plan, progress)

    def score(model: torch.nn.Module) -> Dice:
        prep, roi = plan.preprocessing, plan.patch
        return {t.name: score_model(model, t, prep, roi).means("dice") for t in scored}

    def budget(steps: int) -> TrainSettings:
        return dataclasses.replace(settings, steps=steps)

    if method == "upper_bound":

        def train_alone(steps: int) -> torch.nn.Module:
            return upper_bound(scored[0], plan.encoder, plan.preprocessing, budget(steps))

        return Trainer(train_alone, score)
    if method == "joint":

        def train_joint(steps: int) -> torch.nn.Module:
            return joint(tasks, plan.encoder, plan.preprocessing, budget(steps))

        return Trainer(train_joint, score)
    encoder = catalog_encoder(catalog)

    def train_decoder(steps: int) -> torch.nn.Module:
        return teacher_decoder(scored[0], encoder, plan, budget(steps))

    return Trainer(train_decoder, score)


def catalog_encoder(catalog: Path | None) -> Encoder:
    """The frozen encoder of a finished simulation's catalog (opened, never created).

    Raises:
        ValueError: if there is no catalog there or it holds no encoder yet.
    """
    if catalog is None or not (catalog / INDEX).is_file():
        raise ValueError(f"{catalog}: expected a catalog with a trained encoder")
    encoder = Catalog(catalog).encoder()
    if encoder is None:
        raise ValueError(f"{catalog}: expected a catalog with a trained encoder")
    return encoder


def teacher_decoder(
    task: TaskData, encoder: Encoder, plan: Plan, settings: TrainSettings
) -> ContinualSegmenter:
    """A full (teacher) decoder trained centrally on a frozen encoder, as ``teacher`` does."""
    torch.manual_seed(settings.seed)
    model = ContinualSegmenter(copy.deepcopy(encoder))
    widths = encoder.config.widths
    decoder = Decoder(widths, Genotype.teacher(len(widths) - 1), task.structures)
    model.add_decoder(task.name, decoder)
    train_phase(model, task.name, task.table, task.train_cases, [], plan.preprocessing, settings)
    return model
