"""A task's data as a scenario wrote it: its sites' pooled training splits and its test set.

Every report that trains or scores centrally (the benchmark's baselines, ``trim-report``,
the held-out evaluation of ``simulate`` and ``merge-report``) reads a task through
:class:`TaskData`, from the folders :func:`simulations.sites.write_scenario` wrote.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from core.data import Case, LabelTable, open_dataset, split_cases
from core.local.training import LocalTrainSettings
from simulations.scenario import TEST_FOLDER, Scenario


@dataclass(frozen=True)
class TaskData:
    """A task's pooled training cases and its held-out cases.

    Attributes:
        name: the task's name (lower-case letters, digits, ``_``, ``-``).
        structures: canonical vocabulary names the task labels, in its label order.
        table: label table of ``train_cases`` (it may hold more structures: background).
        train_cases: the pooled training cases of every site of the task (none when only
            the test set was read).
        test_cases: held-out cases.
        test_table: label table of ``test_cases``.
        steps: optimiser steps the central methods train this task for (``None``: the
            settings' ``steps``); a task pooled from several sites gets their sum.
    """

    name: str
    structures: tuple[str, ...]
    table: LabelTable
    train_cases: list[Case]
    test_cases: list[Case]
    test_table: LabelTable
    steps: int | None = None

    def __post_init__(self) -> None:
        if not self.structures:
            raise ValueError(f"{self.name}: a task needs at least one structure")
        for kind, table in (("training", self.table), ("test", self.test_table)):
            missing = [s for s in self.structures if s not in table.structures]
            if missing:
                raise ValueError(f"{self.name}: the {kind} labels lack {missing}")

    def budget(self, settings: LocalTrainSettings) -> LocalTrainSettings:
        """``settings`` with this task's step count."""
        return settings if self.steps is None else dataclasses.replace(settings, steps=self.steps)


def load_tasks(
    scenario: Scenario, sites_dir: Path, val_fraction: float, seed: int
) -> list[TaskData]:
    """Every task's pooled training splits (as its sites train on them) and its test set.

    Args:
        scenario: the scenario that wrote ``sites_dir``.
        sites_dir: ``write_scenario``'s folder (``<site>/Dataset<NNN>_<task>/``, ``test/``).
        val_fraction: the share of each site's cases it keeps for validation.
        seed: the split's seed (:func:`core.data.split_cases`).
    """
    out = []
    for task in scenario.tasks:
        folder = scenario.dataset_folder(task.name)
        train: list[Case] = []
        table = None
        for site in scenario.sites_of(task.name):
            dataset = open_dataset(sites_dir / site.name / folder)
            train += split_cases(dataset.cases, val_fraction, seed)[0]
            table = dataset.labels
        assert table is not None, f"{task.name}: no site"  # load_scenario refuses that
        test = open_dataset(sites_dir / TEST_FOLDER / folder)
        out.append(
            TaskData(task.name, task.structures, table, train, list(test.cases), test.labels)
        )
    return out


def load_test_set(scenario: Scenario, test_root: Path, task: str) -> TaskData:
    """A task's held-out cases alone (no training cases), from ``test_root`` (``sites/test``).

    Raises:
        ScenarioError: if the scenario has no such task.
    """
    test = open_dataset(test_root / scenario.dataset_folder(task))
    structures = scenario.task(task).structures
    return TaskData(task, structures, test.labels, [], list(test.cases), test.labels)
