"""How many steps each method of the benchmark trains a task for.

Two budgets: ``scenario`` (the scenario's ``[federation]`` rounds, and the central
methods as many steps as the method's decoder gets at all the task's sites together)
and ``plateau`` (each task's plateau budget from the upper bound's learning curve,
``simulations.benchmarks.curves``, for every central method, and the federated rounds scaled to
match it); and each method's kept result, checked against the steps it was trained
for, with the time left at the rate measured so far.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.phases import DISTILL, TEACHER
from server.plan import Plan
from simulations.benchmarks.curves import Budget, duration
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


MAX_PLATEAU_STEPS = 10_000_000


def parse_plateaus(items: Sequence[str]) -> dict[str, int]:
    """``TASK=STEPS`` plateau budgets given by hand (``csfl benchmark --plateau``).

    Raises:
        ValueError: naming an item that is not ``TASK=STEPS`` with STEPS a whole number
            from 1 to :data:`MAX_PLATEAU_STEPS`.
    """
    out = {}
    for item in items:
        task, _, text = item.partition("=")
        steps = int(text) if text.strip().isdigit() else 0
        if not task.strip() or not 1 <= steps <= MAX_PLATEAU_STEPS:
            raise ValueError(
                f"--plateau {item!r}: expected TASK=STEPS, STEPS from 1 to {MAX_PLATEAU_STEPS}"
            )
        out[task.strip()] = steps
    return out


def _check_plateau(scenario: Scenario, plateau: Mapping[str, int]) -> None:
    missing = [t.name for t in scenario.tasks if t.name not in plateau]
    if missing:
        raise ValueError(f"no plateau budget for {missing}: run their upper-bound curves first")
    unknown = sorted(set(plateau) - {t.name for t in scenario.tasks})
    if unknown:
        raise ValueError(f"plateau budgets for {unknown}: not tasks of {scenario.name}")


def plateau_scenario(scenario: Scenario, plateau: Mapping[str, int]) -> Scenario:
    """The scenario whose federated training of each task lasts its plateau budget.

    A task's training rounds become ``round(plateau / (local_steps x sites))`` (at least
    1), so that rounds x local steps x sites is about its plateau budget, as the central
    methods get; its distillation rounds scale by the same factor (the student keeps
    its share of the teacher's training). Every other setting is the scenario's.

    Raises:
        ValueError: if a task has no plateau budget.
    """
    _check_plateau(scenario, plateau)
    plan = scenario.plan
    for task in plan.tasks:
        training, distill = task.of(TEACHER), task.of(DISTILL)
        sites = len(scenario.sites_of(task.name))
        rounds = max(1, round(plateau[task.name] / (training.steps * sites)))
        distill_rounds = max(1, round(distill.rounds * rounds / training.rounds))
        task = task.with_phase(TEACHER, rounds=rounds).with_phase(DISTILL, rounds=distill_rounds)
        plan = plan.with_task(task)
    return dataclasses.replace(scenario, plan=plan)


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


FEDERATED = ("continual", "naive_merge", "no_trim")  # run through Flower


def untrimmed(plan: Plan) -> Plan:
    """``plan`` with every task's decoder left full (no search, no distillation)."""
    for task in plan.tasks:
        plan = plan.with_task(
            dataclasses.replace(task, section=dataclasses.replace(task.section, trim=False))
        )
    return plan


def federated_scenario(scenario: Scenario, method: str) -> Scenario:
    """The scenario a federated method runs (``no_trim``: with full decoders)."""
    if method != "no_trim":
        return scenario
    return dataclasses.replace(scenario, plan=untrimmed(scenario.plan))


def method_steps(method: str, scenario: Scenario, central: dict[str, int]) -> dict[str, int]:
    """Per task, the optimiser steps a method trains it for, over all its sites."""
    if method not in FEDERATED:
        return central
    spec = federated_scenario(scenario, method)
    return central_steps(spec, spec.plan, "scenario", {})


def stamp(
    result: dict[str, Any],
    steps: dict[str, int],
    budget: str,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A method's result with the budget it was trained under and the ``--set`` settings."""
    result.update(budget=budget, steps_per_task=steps, settings=dict(settings or {}))
    return result


def reuse_result(
    path: Path, steps: dict[str, int], budget: str, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A kept result, if it was trained under this budget, step counts and settings.

    Raises:
        ValueError: if it was not (a result of another budget is never mixed in).
    """
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    kept = (
        result.get("budget", "scenario"),
        result.get("steps_per_task", steps),
        result.get("settings", {}),
    )
    if kept != (budget, steps, dict(settings or {})):
        raise ValueError(
            f"{path}: trained under the {kept[0]} budget with steps {kept[1]} and settings "
            f"{kept[2]}, not the {budget} budget with steps {steps} and settings "
            f"{dict(settings or {})}; use another --out"
        )
    return result


class Clock:
    """Progress: each method's time, and the time left at the rate measured so far."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.seconds, self.steps, self.began = say, 0.0, 0, 0.0

    def start(self) -> None:
        """A method begins."""
        self.began = time.perf_counter()

    def done(self, method: str, steps: int, rest: list[int]) -> None:
        """A method of ``steps`` ended; ``rest``: the steps of each method still to run."""
        took = time.perf_counter() - self.began
        self.seconds, self.steps = self.seconds + took, self.steps + steps
        left = self.seconds / max(self.steps, 1) * sum(rest)
        self.say(
            f"{method}: done in {duration(took)}; {len(rest)} method(s) left, "
            f"about {duration(left)} at {self.seconds / max(self.steps, 1):.2f} s per step"
        )
