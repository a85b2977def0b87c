"""``federated_joint``: the ``joint`` reference's federated peer, every site at once.

Every site of every task trains one encoder and one full decoder over the union of all
tasks' structures by FedAvg, each site with the marginal loss over the structures its own
data labels (``partial_labels``; ConDistFL-style FedAvg, as NVFlare users would run it),
through Flower's Simulation Engine. It is what a federation could do if every hospital
were there from the start: no tasks arrive later, so nothing is forgotten. Its budget is
the joint reference's: all tasks' central steps together, as whole rounds of every
site's local steps (at least one round).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.bundle import load_bundle
from core.model.cost import count_parameters
from core.phases import BASE
from server.catalog import Catalog
from server.plan import Plan, TaskSection
from simulations.benchmarks.joint import all_structures
from simulations.evaluate import score_means, score_model, upload_summary
from simulations.run import link_sites, simulate
from simulations.scenario import Scenario, TaskSpec
from simulations.task_data import TaskData

TASK = "joint"  # the one task of the federated joint run


def joint_scenario(scenario: Scenario, plan: Plan, steps: int) -> Scenario:
    """One task over every structure, served by every site with partial labels.

    Its rounds are ``steps / (sites x local_steps)`` (at least 1); no trimming and no
    calibration (both need every structure labelled at every site); every other setting
    is the first task's (a plateau budget's rounds aside: its one budget is ``steps``).
    """
    structures = all_structures(scenario.tasks)
    sites = tuple(dataclasses.replace(site, task=TASK) for site in scenario.sites)
    first = plan.tasks[0]
    per_round = len(sites) * first.of(BASE).steps
    section = TaskSection(TASK, structures, trim=False, calibrate=False, partial_labels=True)
    joint = dataclasses.replace(
        first.with_phase(BASE, rounds=max(1, round(steps / per_round))),
        section=section,
        sites=tuple(s.name for s in sites),
    )
    task = TaskSpec(TASK, 1, structures, test_cases=0)
    joint_plan = dataclasses.replace(plan, tasks=(joint,))
    return dataclasses.replace(scenario, tasks=(task,), sites=sites, plan=joint_plan)


def federated_joint(
    scenario: Scenario,
    plan: Plan,
    tasks: list[TaskData],
    steps: int,
    sites: Path,
    run: Path,
    say: Callable[[str], None],
    cpus: int | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train the joint model by FedAvg into ``run`` and score it on every task's test set.

    Args:
        scenario: the benchmark's scenario.
        plan: its plan (the first task's local steps set the rounds).
        tasks: every task's test set.
        steps: optimiser steps over all sites together.
        sites: the scenario's phantoms (shared, not drawn again).
        run: the run's folder (resumes).
        say: progress lines.
        cpus: cores the simulated sites share.

    Returns:
        The method's result, as the benchmark keeps it (one model: after stage ``k``,
        the tasks so far), and the trained network.
    """
    started = time.perf_counter()
    spec = joint_scenario(scenario, plan, steps)
    link_sites(run, sites)
    simulate(spec, run, say, cpus, score=False)  # the joint task has no test set: below
    bundle = load_bundle(run / "catalog" / "bundle")
    prep, roi = bundle.preprocessing, bundle.roi_size
    scores = {t.name: score_means(score_model(bundle.model, t, prep, roi, TASK)) for t in tasks}
    catalog = Catalog(run / "catalog")
    seconds = catalog.phase_seconds()
    result = {
        "method": "federated_joint",
        "stages": [{t.name: scores[t.name] for t in tasks[: k + 1]} for k in range(len(tasks))],
        "parameters": count_parameters(bundle.model),
        "uploads": upload_summary(catalog),
        "train_seconds": round(sum(seconds.values()), 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    return result, bundle.model
