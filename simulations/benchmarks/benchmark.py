"""``csfl benchmark``: this method, its ablations, the upper bound and continual baselines.

On one scenario, with the same phantoms, seeds and training budget:

- ``continual``: this method through Flower (frozen encoder, trimmed and calibrated
  decoders, the confidence merge); ``naive_merge``: the same decoders merged by the
  highest softmax probability; ``no_trim``: the method with full decoders (its own run,
  from the method's training phases: ``simulations/benchmarks/shared_training.py``);
- two references: ``upper_bound``, one encoder + full decoder per task, trained on that
  task's pooled sites; ``joint``, one model over every task's structures trained on all
  their data at once with a marginal loss (``simulations/benchmarks/joint.py``); and its federated
  peer ``federated_joint``, the same model by FedAvg over every site at once, each with
  the marginal loss over what it labels (``simulations/benchmarks/federated_joint.py``, Flower);
- ``finetune``, ``lwf`` and ``mib``: one model with a growing head trained task after
  task (``simulations/benchmarks/baselines.py``). Their first stage and the upper bound's first
  model are one model, trained once (``simulations/benchmarks/shared_stage.py``).

The budget (``simulations/benchmarks/budget.py``) is either the scenario's: central methods train
on the pooled training splits of a task's sites for as many steps as the method's
decoder gets at all those sites together (training rounds x local steps, plus
distillation, times sites), so they see as many patches; or each task's ``plateau``
budget from the upper bound's learning curve (``csfl curve``), the federated rounds
scaled to match. ``joint`` and ``federated_joint`` get the tasks' budgets together.
Every method is evaluated after every stage on the held-out cases of every task so far,
in the preprocessed space (the method's merged label map included). Each method's result is kept in
``OUT/<method>.json`` with its budget and steps; a rerun skips methods already done
(and refuses one kept under other step counts) and says the time left.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from core.bundle import Bundle, load_bundle
from core.data import Case
from core.data.transforms import validation_transforms
from core.inference import volume_outputs
from core.io import atomic_write_bytes, atomic_write_json
from core.local.training import LocalTrainSettings
from core.model import Decoder, Encoder, Genotype
from core.model.cost import count_parameters
from core.phases import CALIBRATE, DISTILL, SEARCH, TEACHER
from server.plan import Plan
from simulations.benchmarks.baselines import (
    GrowingSegmenter,
    central_settings,
    sequential,
    upper_bound,
)
from simulations.benchmarks.budget import (
    Clock,
    central_steps,
    federated_scenario,
    method_steps,
    plateau_scenario,
    reuse_result,
    stamp,
)
from simulations.benchmarks.curves import Budget, plateau_budgets
from simulations.benchmarks.federated_joint import federated_joint
from simulations.benchmarks.federated_methods import Scores, federated
from simulations.benchmarks.joint import joint
from simulations.benchmarks.report import markdown, overlay_figure, plots
from simulations.benchmarks.shared_stage import first_stage
from simulations.benchmarks.shared_training import adopt_training
from simulations.evaluate import (
    merged_map,
    score_means,
    score_model,
    task_labels,
)
from simulations.run import link_sites, write_sites_once
from simulations.scenario import Scenario
from simulations.task_data import TaskData, load_tasks

ORDER = (
    "continual",
    "naive_merge",
    "no_trim",
    "upper_bound",
    "joint",
    "federated_joint",
    "finetune",
    "lwf",
    "mib",
)


def central(
    method: str,
    plan: Plan,
    tasks: list[TaskData],
    settings: LocalTrainSettings,
    say: Callable[[str], None],
    folder: Path,
) -> dict[str, Any]:
    """Train and evaluate a central method: a reference or a sequential baseline.

    The first task's model of ``upper_bound``, ``finetune``, ``lwf`` and ``mib`` is one
    shared model (:mod:`simulations.benchmarks.shared_stage`, kept under ``folder``); its training
    time counts for each of them.
    """
    prep, roi, image = plan.preprocessing, plan.patch, tasks[0].test_cases[0].image
    stages: list[Scores] = []
    start = time.perf_counter()
    if method == "joint":
        say(f"joint: training one model on all tasks for {settings.steps} steps")
        model = joint(tasks, plan.encoder, prep, settings)
        scores: Scores = {t.name: score_means(score_model(model, t, prep, roi)) for t in tasks}
        # one model of every task at once: after stage k, the tasks so far
        stages = [{t.name: scores[t.name] for t in tasks[: k + 1]} for k in range(len(tasks))]
        return _central_result(method, stages, model, start, image, plan)
    first, shared = first_stage(folder, tasks[0], plan.encoder, prep, settings)
    start = time.perf_counter() - shared  # the shared stage counts for every method using it
    if method == "upper_bound":
        models: list[GrowingSegmenter] = [first]
        scores = {}  # a task's own model never changes: scored once
        for task in tasks:
            if task is not tasks[0]:
                say(f"upper_bound: training {task.name}")
                models.append(upper_bound(task, plan.encoder, prep, settings))
            scores[task.name] = score_means(score_model(models[-1], task, prep, roi))
            stages.append(dict(scores))
        train = time.perf_counter() - start
        predict = sum(_network_seconds(m, image, plan) for m in models)
        parameters = sum(count_parameters(m) for m in models)
    else:

        def on_stage(k: int, model: GrowingSegmenter) -> None:
            stages.append(
                {t.name: score_means(score_model(model, t, prep, roi)) for t in tasks[: k + 1]}
            )
            say(f"{method}: evaluated after stage {k + 1}")

        grown = sequential(
            method,  # type: ignore[arg-type]
            tasks,
            plan.encoder,
            prep,
            settings,
            on_stage=on_stage,
            first=first,
        )
        return _central_result(method, stages, grown, start, image, plan)
    return {
        "method": method,
        "stages": stages,
        "parameters": parameters,
        "train_seconds": round(train, 1),
        "predict_seconds": round(predict, 2),
    }


def _central_result(
    method: str,
    stages: list[Scores],
    model: torch.nn.Module,
    start: float,
    image: Path,
    plan: Plan,
) -> dict[str, Any]:
    """A one-model central method's figures (its training began at ``start``)."""
    train = time.perf_counter() - start
    return {
        "method": method,
        "stages": stages,
        "parameters": count_parameters(model),
        "train_seconds": round(train, 1),
        "predict_seconds": round(_network_seconds(model, image, plan), 2),
    }


@torch.no_grad()
def _network_seconds(model: torch.nn.Module, image: Path, plan: Plan) -> float:
    """Wall time to preprocess one CT and run a model over it by sliding windows."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose

    from core.data.transforms import IMAGE, preprocessing

    start = time.perf_counter()
    item = Compose(preprocessing(plan.preprocessing, None))({"case": Case("x", image)})
    x = item[IMAGE][None].to(next(model.parameters()).device)

    def organ(patch: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = model(patch)
        return {k: v.organ for k, v in out.items()} if isinstance(out, dict) else out

    sliding_window_inference(x, plan.patch, 1, organ, 0.25)
    return time.perf_counter() - start


def one_model_parameters(plan: Plan, structures: tuple[str, ...]) -> int:
    """Parameters of one encoder and one full decoder: the size of a single network."""
    widths = plan.encoder.widths
    decoder = Decoder(widths, Genotype.teacher(len(widths) - 1), structures)
    return count_parameters(Encoder(plan.encoder)) + count_parameters(decoder)


QUICK_STEPS = 5
"""``--quick``: each central method's optimiser steps per task."""


def quick_plan(plan: Plan) -> Plan:
    """``--quick``: the federated methods' budget, one short round of each training phase.

    One round of 3 local steps (base, teacher), search steps 2, distillation and
    calibration steps 3; every other setting is the plan's.
    """
    for task in plan.tasks:
        task = (
            task.with_phase(TEACHER, rounds=1, steps=3)
            .with_phase(SEARCH, steps=2)
            .with_phase(DISTILL, steps=3)
            .with_phase(CALIBRATE, steps=3)
        )
        plan = plan.with_task(task)
    return plan


def run_benchmark(
    scenario: Scenario,
    out: Path,
    quick: bool = False,
    methods: tuple[str, ...] = ORDER,
    say: Callable[[str], None] = print,
    progress: bool = False,
    budget: Budget = "scenario",
    curves: Path | None = None,
    plateau: Mapping[str, int] | None = None,
    cpus: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every method on a scenario and gather the figures.

    Args:
        scenario: the scenario; its ``[federation]`` table is the method's budget.
        out: the benchmark folder (``<method>/`` runs, ``<method>.json`` results).
        quick: a smoke test of the whole pipeline: central methods train
            :data:`QUICK_STEPS` steps per task, federated ones :func:`quick_plan`.
        methods: which of :data:`ORDER` to run.
        say: progress messages.
        progress: progress bars for central training.
        budget: ``scenario`` (the scenario's rounds) or ``plateau`` (each task's plateau
            budget from the upper-bound curves in ``curves``; :mod:`simulations.benchmarks.budget`).
        curves: ``csfl curve``'s folder (``plateau`` only).
        plateau: plateau budgets in steps per task, taken before the curves' (``plateau``
            only; the figures of curves measured before, without their folder).
        cpus: cores the federated methods' simulated sites share (default: all).
        settings: the ``--set`` keys already applied to ``scenario``'s federation table
            (:func:`simulations.scenario.parse_settings`); kept with every result, and a
            result kept under other settings is refused.

    Returns:
        The benchmark document (also written to ``OUT/benchmark.json``).

    Raises:
        ValueError: for ``plateau`` without a plateau for every task, or a kept result
            that was made with other step counts.
    """
    out = out.resolve()
    budgets: dict[str, int] = {}
    if budget == "plateau":
        budgets = {**(plateau_budgets(curves) if curves is not None else {}), **(plateau or {})}
        scenario = plateau_scenario(scenario, budgets)  # the federated methods' rounds
    if quick:
        scenario = dataclasses.replace(scenario, plan=quick_plan(scenario.plan))
    plan = scenario.plan
    steps = central_steps(scenario, plan, budget, budgets)
    if quick:
        steps = dict.fromkeys(steps, QUICK_STEPS)
    planned = {m: method_steps(m, scenario, steps) for m in methods}
    results: dict[str, dict[str, Any]] = {}
    clock = Clock(say)
    sites = out / "continual" / "sites"
    loaded: list[TaskData] = []

    def shared_tasks() -> list[TaskData]:
        """The tasks on the shared phantoms, read once for every method that needs them."""
        if not loaded:
            share_sites(scenario, out, say)
            training = plan.training
            loaded.extend(load_tasks(scenario, sites, training.val_fraction, training.seed))
        return loaded

    for method in methods:
        path = out / f"{method}.json"
        if path.is_file():
            results[method] = reuse_result(path, planned[method], budget, settings)
            say(f"{method}: reusing {path}")
            continue
        if method == "naive_merge":
            continue  # comes with continual
        clock.start()
        if method in ("continual", "no_trim"):
            spec = federated_scenario(scenario, method)
            if method == "no_trim":
                share_sites(scenario, out, say)
                adopt_training(out / "continual", out / method, spec.plan, say)
            for result in federated(method, spec, plan, out / method, say, cpus):
                results[result["method"]] = stamp(result, planned[method], budget, settings)
                atomic_write_json(out / f"{result['method']}.json", result)
        else:
            tasks = shared_tasks()
            if method == "federated_joint":
                total = sum(steps.values())  # the joint reference's budget
                result, model = federated_joint(
                    scenario, plan, tasks, total, sites, out / method, say, cpus
                )
                image = tasks[0].test_cases[0].image
                result["predict_seconds"] = round(_network_seconds(model, image, plan), 2)
            else:
                train = central_settings(plan, progress)
                if method == "joint":  # one model for every task: their budgets together
                    train = dataclasses.replace(train, steps=sum(steps.values()))
                budgeted = [dataclasses.replace(t, steps=steps[t.name]) for t in tasks]
                result = central(method, plan, budgeted, train, say, out)
            results[method] = stamp(result, steps, budget, settings)
            atomic_write_json(path, result)
        rest = [m for m in methods if m != "naive_merge" and not (out / f"{m}.json").is_file()]
        clock.done(method, sum(planned[method].values()), [sum(planned[m].values()) for m in rest])
    first = scenario.tasks[0].structures
    document = {
        "scenario": scenario.name,
        "quick": quick,
        "budget": budget,
        "central_steps_per_task": steps,  # plateau: each task's upper-bound plateau
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "tasks": [t.name for t in scenario.tasks],
        "one_model_parameters": one_model_parameters(plan, first),
        "methods": {m: results[m] for m in ORDER if m in results},
    }
    atomic_write_json(out / "benchmark.json", document)
    atomic_write_bytes(out / "report.md", markdown(document).encode())
    plots(document, out)
    if "continual" in results:
        bundle = load_bundle(out / "continual" / "catalog" / "bundle")
        tasks = load_tasks(
            scenario, out / "continual" / "sites", plan.training.val_fraction, plan.training.seed
        )
        overlay_figure(overlay_rows(bundle, tasks), out / "overlays.png")
    say(f"wrote {out / 'benchmark.json'}, {out / 'report.md'} and the PNG plots")
    return document


def share_sites(scenario: Scenario, out: Path, say: Callable[[str], None]) -> None:
    """Every method uses the same phantoms: ``continual``'s, written by whoever needs them first.

    Methods trained side by side (``--jobs``) find them written by their parent.
    """
    link_sites(out / "no_trim", write_sites_once(scenario, out / "continual" / "sites", say))


@torch.no_grad()
def overlay_rows(bundle: Bundle, tasks: list[TaskData]) -> list[tuple[str, Any, Any, Any]]:
    """For each task's first test case, the axial slice with the most ground truth."""
    rows = []
    for task in tasks:
        case = task.test_cases[0]
        item = validation_transforms(bundle.preprocessing, task.test_table, task.structures)(
            {"case": case}
        )
        merged = merged_map(bundle, volume_outputs(bundle, case.image))
        truth = item["label"][0].numpy()
        z = int(truth.reshape(-1, truth.shape[-1]).astype(bool).sum(0).argmax())
        prediction = task_labels(merged, task.structures)[0, 0].numpy()
        rows.append(
            (task.name, item["image"][0].numpy()[..., z], truth[..., z], prediction[..., z])
        )
    return rows
