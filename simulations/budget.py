"""How many steps each method of the benchmark trains a task for.

Two budgets: ``scenario`` (the scenario's ``[federation]`` rounds, and the central
methods as many steps as the method's decoder gets at all the task's sites together)
and ``plateau`` (each task's plateau budget from the upper bound's learning curve,
``simulations.curves``, for every central method, and the federated rounds scaled to
match it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.phases import DISTILL, TEACHER
from core.records import fields_of
from server.plan import Plan, parse_plan
from simulations.curves import Budget
from simulations.run import PER_TASK, plan_document
from simulations.scenario import Scenario


def budget_steps(plan: Plan, task: str, sites: int) -> int:
    """Optimiser steps a task gets in the method, summed over its ``sites``.

    Each site trains the task's decoder for the training rounds' and then the
    distillation rounds' local steps; a central method on the pooled data gets as many
    steps as all of them together, so it sees as many patches.
    """
    plan_task = plan.task(task)
    training, distill = plan_task.of(TEACHER), plan_task.of(DISTILL)
    steps = training.rounds * training.steps
    if plan_task.section.trim:
        steps += distill.rounds * distill.steps
    return steps * sites


def _key(record: type, field: str) -> str:
    """The plan key of a record's field (declared once, in the record)."""
    return next(f.key for f in fields_of(record) if f.name == field)


def _check_plateau(scenario: Scenario, plateau: Mapping[str, int]) -> None:
    missing = [t.name for t in scenario.tasks if t.name not in plateau]
    if missing:
        raise ValueError(f"no plateau budget for {missing}: run their upper-bound curves first")


def plateau_scenario(scenario: Scenario, plateau: Mapping[str, int]) -> Scenario:
    """The scenario whose federated training of each task lasts its plateau budget.

    A task's training rounds become ``round(plateau / (local_steps x sites))`` (at least
    1), so that rounds x local steps x sites is about its plateau budget, as the central
    methods get; its distillation rounds scale by the same factor (the student keeps
    its share of the teacher's training). Written as ``[federation.per_task.<task>]``
    tables; every other setting is the scenario's.

    Raises:
        ValueError: if a task has no plateau budget.
    """
    _check_plateau(scenario, plateau)
    plan = parse_plan(plan_document(scenario), f"scenario {scenario.name}")
    training_type, distill_type = TEACHER.settings_type, DISTILL.settings_type
    per_task: dict[str, dict[str, Any]] = {
        k: dict(v) for k, v in scenario.federation.get(PER_TASK, {}).items()
    }
    for task in scenario.tasks:
        training, distill = plan.task(task.name).of(TEACHER), plan.task(task.name).of(DISTILL)
        sites = len(scenario.sites_of(task.name))
        rounds = max(1, round(plateau[task.name] / (training.steps * sites)))
        distill_rounds = max(1, round(distill.rounds * rounds / training.rounds))
        per_task.setdefault(task.name, {}).update(
            {_key(training_type, "rounds"): rounds, _key(distill_type, "rounds"): distill_rounds}
        )
    federation = {**scenario.federation, PER_TASK: per_task}
    return dataclasses.replace(scenario, federation=federation)


def central_steps(
    scenario: Scenario, plan: Plan, budget: Budget, plateau: Mapping[str, int]
) -> dict[str, int]:
    """Per task, the steps a central method trains it for under ``budget``."""
    if budget == "plateau":
        _check_plateau(scenario, plateau)
        return {t.name: plateau[t.name] for t in scenario.tasks}
    return {
        t.name: budget_steps(plan, t.name, len(scenario.sites_of(t.name))) for t in scenario.tasks
    }
