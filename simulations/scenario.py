"""Scenarios: which hospitals exist, what each labels, and when each task arrives.

A scenario TOML has top-level ``name``, ``description``, ``size`` (voxels per side) and
``seed``; one ``[[tasks]]`` table per task (``name``, ``stage``, ``structures``,
``test_cases``), one ``[[sites]]`` table per hospital (``name``, ``task``, ``region``,
``cases``, optional ``lesions``/``lesion_rate`` and ``scanner`` settings), and a
``[federation]`` table (model and training budget) that becomes the server's plan. A site labels
only its task's structures: everything else in its label maps is background, as in real
partially labelled datasets.
"""

from __future__ import annotations

import dataclasses
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from core import anatomy
from core.records import RecordError, check_unknown, keys_of
from server.plan import ModelSection, Plan, TrainingSection, parse_plan, task_keys
from simulations.phantoms import LESIONS, REGIONS, Scanner

TEST_FOLDER = "test"  # where write_scenario puts every task's held-out cases, beside the sites


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file and field."""


@dataclass(frozen=True)
class TaskSpec:
    """A task: its structures, the stage at which it arrives, held-out test cases."""

    name: str
    stage: int
    structures: tuple[str, ...]
    test_cases: int = 2


@dataclass(frozen=True)
class SiteSpec:
    """A hospital: the task it serves, its scanner, field of view and patients."""

    name: str
    task: str
    region: str
    cases: int
    scanner: Scanner = field(default_factory=Scanner)
    lesions: tuple[str, ...] = ()
    lesion_rate: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated."""

    name: str
    description: str
    size: int
    seed: int
    tasks: tuple[TaskSpec, ...]
    sites: tuple[SiteSpec, ...]
    federation: Mapping[str, Any]
    """The ``[federation]`` table as written (``--set`` replaces its keys)."""
    plan: Plan
    """The server's plan, parsed once from ``federation`` (:func:`federation_plan`);
    code that changes a budget replaces it with a typed copy, never a key of the table."""

    def task(self, name: str) -> TaskSpec:
        """The task of that name."""
        return next(t for t in self.tasks if t.name == name)

    def dataset_folder(self, task: str) -> str:
        """The folder of a task's datasets at its sites and in the test set.

        ``Dataset<NNN>_<task>`` (nnU-Net v2's naming), ``NNN`` the task's 1-based position
        in the scenario.

        Raises:
            ScenarioError: if the scenario has no such task.
        """
        names = [t.name for t in self.tasks]
        if task not in names:
            raise ScenarioError(f"scenario {self.name}: no task {task!r} (it has {names})")
        return f"Dataset{names.index(task) + 1:03d}_{task}"

    def sites_of(self, task: str) -> list[SiteSpec]:
        """The sites that serve a task."""
        return [s for s in self.sites if s.task == task]

    @property
    def stages(self) -> list[int]:
        """Stage numbers in order."""
        return sorted({t.stage for t in self.tasks})

    def stage_members(self, stage: int) -> tuple[list[str], list[str]]:
        """The names of a stage's tasks and of the sites that serve them, in order."""
        tasks = [t.name for t in self.tasks if t.stage == stage]
        return tasks, [s.name for s in self.sites if s.task in tasks]

    def case_seed(self, group: str, index: int) -> int:
        """A stable seed for case ``index`` of a site (or of a task's test set)."""
        return zlib.crc32(f"{self.seed}:{group}:{index}".encode())


PER_TASK = "per_task"  # [federation.per_task.<task>]: one task's budget keys
BUILTIN = Path(str(resources.files("simulations") / "scenarios"))
"""The scenarios shipped with the package (the merge family in ``family/``)."""


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    return sorted(p.name[:-5] for p in BUILTIN.iterdir() if p.name.endswith(".toml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """A scenario file: a path as given, or the name of a built-in scenario."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    candidate = BUILTIN / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise ScenarioError(
            f"no scenario {name_or_path!r}: built-in ones are {', '.join(builtin_scenarios())}"
        )
    return candidate


def _get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ScenarioError(f"{where}: missing {key!r}")
    value = obj[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ScenarioError(f"{where}.{key}: expected {kind.__name__}, found {value!r}")
    return value


def parse_settings(settings: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line settings (``--set``) as a table, in key order.

    A value is read as TOML (``3``, ``0.5``, ``true``, ``[1, 2]``, ``"bf16"``); a bare
    word is a string. The keys are checked where the plan is made
    (:func:`simulations.run.plan_document`), which names an unknown one.

    Raises:
        ScenarioError: for a setting without ``=`` or a key.
    """
    updates: dict[str, Any] = {}
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE, e.g. precision=bf16")
        try:
            updates[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            updates[key.strip()] = text.strip()
    return dict(sorted(updates.items()))


def federation_plan(
    name: str,
    seed: int,
    tasks: Sequence[TaskSpec],
    sites: Sequence[SiteSpec],
    federation: Mapping[str, Any],
) -> Plan:
    """The server's plan for a scenario's tasks and sites, from its ``[federation]`` table.

    The table holds ``[model]`` and ``[training]`` keys and every task's budget keys, all
    as the plan declares them (``server.plan``); an unknown key is an error naming the
    nearest one. Its optional ``[federation.per_task.<task>]`` tables set budget keys for
    one task. Each stage's run leaves the later stages' tasks waiting, so the plan allows
    partial runs (``partial_runs``); ``simulations.run.simulate`` checks each stage's own
    tasks. The plan's seed is the scenario's unless the table sets ``seed``, which seeds
    the training alone (``--set seed=1``: another draw on the same phantoms).

    Raises:
        ScenarioError: naming the key that is wrong.
    """
    fed = dict(federation)
    per_task = fed.pop(PER_TASK, {})
    where = f"scenario {name}: federation"
    model_keys, training_keys = set(keys_of(ModelSection)), set(keys_of(TrainingSection))
    budget_keys = task_keys() - {"name", "structures", "sites"}
    names = [t.name for t in tasks]
    try:
        check_unknown(fed, model_keys | training_keys | budget_keys, where)
        if not isinstance(per_task, dict) or not all(
            isinstance(v, dict) for v in per_task.values()
        ):
            raise RecordError(f"{where}.{PER_TASK}: expected a table of tables, one per task")
        check_unknown(per_task, set(names), f"{where}.{PER_TASK}")
        for task, table in per_task.items():
            check_unknown(table, budget_keys, f"{where}.{PER_TASK}.{task}")
        doc = {
            "model": {k: v for k, v in fed.items() if k in model_keys},
            "training": {
                "partial_runs": True,
                "seed": seed,
                **{k: v for k, v in fed.items() if k in training_keys},
            },
            "tasks": [
                {
                    "name": t.name,
                    "structures": list(t.structures),
                    "sites": [s.name for s in sites if s.task == t.name],
                    **{k: v for k, v in fed.items() if k in budget_keys},
                    **per_task.get(t.name, {}),
                }
                for t in tasks
            ],
        }
        return parse_plan(doc, where)
    except ValueError as e:
        raise ScenarioError(str(e)) from None


def with_federation(scenario: Scenario, updates: Mapping[str, Any]) -> Scenario:
    """The scenario with ``updates`` replacing keys of its ``[federation]`` table.

    Raises:
        ScenarioError: for a key or value the plan refuses.
    """
    federation = {**scenario.federation, **updates}
    s = scenario
    plan = federation_plan(s.name, s.seed, s.tasks, s.sites, federation)
    return dataclasses.replace(scenario, federation=federation, plan=plan)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario (a built-in name or a TOML path).

    Raises:
        ScenarioError: naming the file and field for anything wrong.
    """
    path = scenario_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read scenario ({e})") from None
    where = str(path)
    tasks = []
    for i, t in enumerate(doc.get("tasks", [])):
        at = f"{where}: tasks[{i}]"
        structures = tuple(_get(t, "structures", list, at))
        for s in structures:
            try:
                anatomy.get(s)
            except anatomy.UnknownStructureError as e:
                raise ScenarioError(f"{at}.structures: {e}") from None
        tasks.append(
            TaskSpec(
                _get(t, "name", str, at),
                _get(t, "stage", int, at),
                structures,
                int(t.get("test_cases", 2)),
            )
        )
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise ScenarioError(f"{where}: expected tasks with distinct names, found {names}")
    sites = []
    for i, s in enumerate(doc.get("sites", [])):
        at = f"{where}: sites[{i}]"
        task, region = _get(s, "task", str, at), _get(s, "region", str, at)
        if task not in names:
            raise ScenarioError(f"{at}.task: {task!r} is not one of the tasks {names}")
        if region not in REGIONS:
            raise ScenarioError(f"{at}.region: {region!r} is not one of {', '.join(REGIONS)}")
        lesions = tuple(s.get("lesions", ()))
        if bad := [x for x in lesions if x not in LESIONS]:
            raise ScenarioError(
                f"{at}.lesions: {bad} are not drawn; expected some of {', '.join(LESIONS)}"
            )
        try:
            scanner = Scanner(**s.get("scanner", {}))
        except TypeError as e:
            raise ScenarioError(f"{at}.scanner: {e}") from None
        sites.append(
            SiteSpec(
                _get(s, "name", str, at),
                task,
                region,
                _get(s, "cases", int, at),
                scanner,
                lesions,
                float(s.get("lesion_rate", 0.0)),
            )
        )
    for t in tasks:
        if not any(s.task == t.name for s in sites):
            raise ScenarioError(f"{where}: task {t.name!r} has no site")
    size = _get(doc, "size", int, where)
    if size < 32:
        raise ScenarioError(f"{where}.size: {size} is below the 32 voxels a phantom needs")
    federation = doc.get("federation", {})
    if not isinstance(federation, dict):
        raise ScenarioError(f"{where}.federation: expected a table")
    name, seed = _get(doc, "name", str, where), int(doc.get("seed", 0))
    plan = federation_plan(name, seed, tasks, sites, federation)
    return Scenario(
        name,
        str(doc.get("description", "")),
        size,
        seed,
        tuple(tasks),
        tuple(sites),
        federation,
        plan,
    )
