"""The methods a learning curve can train, each as a :class:`simulations.benchmarks.curves.Trainer`.

All use the scenario's plan (encoder, patch, preprocessing, optimiser, seed) as the
benchmark's central methods do (:func:`simulations.benchmarks.baselines.central_settings`), and
score by :func:`simulations.evaluate.score_model` on held-out cases. :func:`run_curve`
(``csfl curve``) picks one and draws its curve with :mod:`simulations.benchmarks.curves`, which
imports nothing from here.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.bundle import load_bundle
from core.local.training import LocalTrainSettings, train_phase
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.phases import BASE
from server.catalog import INDEX, Catalog
from server.plan import Plan
from simulations.benchmarks.baselines import central_settings, upper_bound
from simulations.benchmarks.curves import (
    ALL_TASKS,
    CURVE_METHODS,
    CurveMethod,
    CurveSettings,
    Dice,
    Trainer,
    curve_path,
    learning_curve,
    machine_cpu_seconds,
    plot_curve,
)
from simulations.benchmarks.joint import joint
from simulations.evaluate import score_model
from simulations.run import link_sites, simulate, write_sites_once
from simulations.scenario import Scenario, load_scenario, parse_settings, with_federation
from simulations.task_data import TaskData, load_tasks


def make_trainer(
    scenario: Scenario,
    method: CurveMethod,
    task: str,
    sites: Path,
    catalog: Path | None,
    progress: bool = False,
    work: Path | None = None,
    say: Callable[[str], None] = print,
) -> Trainer[torch.nn.Module]:
    """The trainer of ``method`` on ``task`` of a scenario whose phantoms are in ``sites``.

    ``progress`` shows a progress bar while a budget trains; ``work`` holds the federated
    method's runs (default: beside ``sites``), ``say`` their progress lines.

    Raises:
        ValueError: for ``decoder`` without a catalog holding a trained encoder, or
            ``federated`` on a task other than the first.
    """
    plan = scenario.plan
    if method == "federated":
        return federated_trainer(scenario, plan, task, sites, work or sites.parent, say)
    tasks = load_tasks(scenario, sites, plan.training.val_fraction, plan.training.seed)
    scored = tasks if task == ALL_TASKS else [t for t in tasks if t.name == task]
    settings = central_settings(plan, progress)

    def score(model: torch.nn.Module) -> Dice:
        prep, roi = plan.preprocessing, plan.patch
        return {t.name: score_model(model, t, prep, roi).means("dice") for t in scored}

    def budget(steps: int) -> LocalTrainSettings:
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
    task: TaskData, encoder: Encoder, plan: Plan, settings: LocalTrainSettings
) -> ContinualSegmenter:
    """A full (teacher) decoder trained centrally on a frozen encoder, as ``teacher`` does."""
    torch.manual_seed(settings.seed)
    model = ContinualSegmenter(copy.deepcopy(encoder))
    widths = encoder.config.widths
    decoder = Decoder(widths, Genotype.teacher(len(widths) - 1), task.structures)
    model.add_decoder(task.name, decoder)
    train_phase(model, task.name, task.table, task.train_cases, [], plan.preprocessing, settings)
    return model


def federated_trainer(
    scenario: Scenario,
    plan: Plan,
    task: str,
    sites: Path,
    work: Path,
    say: Callable[[str], None],
) -> Trainer[torch.nn.Module]:
    """The first task's encoder and full decoder by FedAvg, through Flower's engine.

    The scenario's federation trains the first task alone (its sites, local steps and
    aggregation settings) in the Simulation Engine.

    A budget of ``steps`` is the optimiser steps of all sites together, as the pooled
    reference counts them: ``steps / (sites x local_steps)`` rounds, no trimming and no
    calibration. Each budget's run is ``work/federated-<task>-<steps>/`` and resumes.

    Raises:
        ValueError: for a task other than the first (later tasks train decoders on a
            frozen encoder: ``decoder``), or a budget that is not a whole number of rounds.
    """
    first = scenario.tasks[0]
    if task != first.name:
        raise ValueError(
            f"--task: federated trains the encoder, so only the first task ({first.name!r});"
            " later tasks' decoders: --method decoder"
        )
    members = scenario.sites_of(task)
    per_round = len(members) * plan.tasks[0].of(BASE).steps
    test = load_tasks(scenario, sites, plan.training.val_fraction, plan.training.seed)[0]

    def train(steps: int) -> torch.nn.Module:
        if steps % per_round:
            raise ValueError(
                f"{steps} steps: a federated budget is whole rounds of {per_round} steps"
                f" ({len(members)} sites x {per_round // len(members)} local steps)"
            )
        trained = plan.task(first.name).with_phase(BASE, rounds=steps // per_round)
        trained = dataclasses.replace(
            trained, section=dataclasses.replace(trained.section, trim=False, calibrate=False)
        )
        alone_plan = dataclasses.replace(plan, tasks=(trained,))
        alone = dataclasses.replace(scenario, tasks=(first,), sites=tuple(members), plan=alone_plan)
        run = work / f"federated-{task}-{steps}"
        link_sites(run, sites)  # the curve's phantoms, not a new drawing
        simulate(alone, run, say)
        return load_bundle(run / "catalog" / "bundle").model

    def score(model: torch.nn.Module) -> Dice:
        return {task: score_model(model, test, plan.preprocessing, plan.patch).means("dice")}

    return Trainer(train, score, machine_cpu_seconds)  # Flower's processes: the machine's


def run_curve(
    scenario_name: str,
    method: CurveMethod,
    task: str,
    out: Path,
    settings: CurveSettings,
    sites: Path | None = None,
    catalog: Path | None = None,
    say: Callable[[str], None] = print,
    progress: bool = False,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """``csfl curve``: a method's learning curve on a scenario's task, JSON and PNG.

    Args:
        scenario_name: a built-in scenario or a TOML path.
        method: ``upper_bound`` (a model for the task alone), ``joint`` (one model on
            every task; ``task`` may be ``all``), ``decoder`` (a teacher decoder on
            the frozen encoder of ``catalog``) or ``federated`` (the first task's encoder
            and decoder by FedAvg over its sites, through Flower, runs kept in
            ``OUT/federated-<task>-<steps>/``).
        task: the task scored.
        out: the curves' folder.
        settings: budgets and stopping rule.
        sites: the scenario's phantoms (default ``OUT/sites``, written once if missing).
        catalog: a finished simulation's catalog (``decoder`` only).
        say: progress lines.
        progress: a progress bar while a budget trains.
        overrides: ``KEY=VALUE`` settings of the scenario's federation table
            (:func:`simulations.scenario.parse_settings`), part of the curve's identity.

    Raises:
        ScenarioError, ValueError: for an unknown task, method, setting or a missing
            catalog.
    """
    changed = parse_settings(overrides)
    spec = with_federation(load_scenario(scenario_name), changed)  # a bad --set fails here
    if method not in CURVE_METHODS:
        raise ValueError(f"--method: {method!r}; expected one of {', '.join(CURVE_METHODS)}")
    names = [t.name for t in spec.tasks]
    allowed = [*names, ALL_TASKS] if method == "joint" else names
    if task not in allowed:
        raise ValueError(f"--task: {task!r} is not one of {allowed}")
    if (method == "decoder") != (catalog is not None):
        raise ValueError("--catalog: a finished simulation's catalog, for --method decoder only")
    if catalog is not None:
        catalog_encoder(catalog)  # before the phantoms are written
    sites = write_sites_once(spec, (sites or out / "sites").resolve(), say)
    trainer = make_trainer(spec, method, task, sites, catalog, progress, out.resolve(), say)
    identity = {
        "method": method,
        "task": task,
        "scenario": spec.name,
        "seed": spec.seed,
        "settings": changed,
    }
    path = curve_path(out, method, task)
    doc = learning_curve(path, identity, trainer, settings, say)
    plot_curve(doc, path.with_suffix(".png"))
    return doc
