"""The task plan (TOML): the model, the tasks in order, which sites serve each, budgets.

```toml
[model]
encoder_widths = [8, 16, 32, 64, 128]
patch = [64, 64, 64]
spacing_mm = [1.5, 1.5, 1.5]
hu_window = [-1000.0, 1000.0]

[training]
batch_size = 2
val_fraction = 0.2
seed = 0
max_payload_mb = 256

[[tasks]]
name = "abdomen"
structures = ["liver", "spleen", "kidney_left", "kidney_right"]
sites = ["hospA", "hospB"]   # or "any": every site whose data labels these structures
min_sites = 1
rounds = 3
local_steps = 50
lr = 0.01
trim = true            # search a compact student and distil the teacher into it
size_budget = 0.25     # the student's parameters, as a share of the teacher decoder's
search_rounds = 1      # search_steps, distill_rounds, distill_steps default to the above
kd_weight = 1.0
temperature = 2.0
calibrate = true       # train the confidence and anomaly heads, record the body-part range
calibrate_rounds = 1   # calibrate_steps defaults to local_steps
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import anatomy
from core.data.transforms import Preprocessing
from core.model import EncoderConfig, check_task_name


class PlanError(ValueError):
    """A plan that cannot run; the message names the file and field."""


@dataclass(frozen=True)
class TaskPlan:
    """One task: its structures, its sites (``None``: any that labels them) and budget."""

    name: str
    structures: tuple[str, ...]
    sites: tuple[str, ...] | None
    min_sites: int = 1
    rounds: int = 3
    local_steps: int = 50
    lr: float = 1e-2
    trim: bool = True
    size_budget: float = 0.25
    search_rounds: int = 1
    search_steps: int = 50
    distill_rounds: int = 3
    distill_steps: int = 50
    kd_weight: float = 1.0
    temperature: float = 2.0
    calibrate: bool = True
    calibrate_rounds: int = 1
    calibrate_steps: int = 50


@dataclass(frozen=True)
class Plan:
    """The whole plan, validated."""

    encoder: EncoderConfig
    patch: tuple[int, int, int]
    preprocessing: Preprocessing
    batch_size: int
    val_fraction: float
    seed: int
    max_payload_bytes: int
    tasks: tuple[TaskPlan, ...]

    def task(self, name: str) -> TaskPlan:
        """The task of that name."""
        return next(t for t in self.tasks if t.name == name)


def _num_list(
    table: dict[str, Any], key: str, n: int, where: str, default: list[float]
) -> list[float]:
    value = table.get(key, default)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, int | float) for v in value)
    ):
        raise PlanError(f"{where}.{key}: expected a list of {n} numbers, found {value!r}")
    return [float(v) for v in value]


def _task(t: dict[str, Any], where: str) -> TaskPlan:
    if not isinstance(t.get("name"), str):
        raise PlanError(f"{where}.name: expected a string")
    try:
        check_task_name(t["name"])
    except ValueError as e:
        raise PlanError(f"{where}.name: {e}") from None
    structures = t.get("structures")
    if not isinstance(structures, list) or not structures:
        raise PlanError(f"{where}.structures: expected a non-empty list of structure names")
    unknown = []
    for s in structures:
        try:
            anatomy.get(str(s))
        except anatomy.UnknownStructureError as e:
            unknown.append(str(e))
    if unknown:
        raise PlanError(f"{where}.structures: {'; '.join(unknown)}")
    sites = t.get("sites", "any")
    if sites != "any" and not (
        isinstance(sites, list) and sites and all(isinstance(s, str) for s in sites)
    ):
        raise PlanError(f'{where}.sites: expected "any" or a list of site names, found {sites!r}')
    counts = {k: t.get(k, d) for k, d in (("min_sites", 1), ("rounds", 3), ("local_steps", 50))}
    counts |= {
        "search_rounds": t.get("search_rounds", 1),
        "search_steps": t.get("search_steps", counts["local_steps"]),
        "distill_rounds": t.get("distill_rounds", counts["rounds"]),
        "distill_steps": t.get("distill_steps", counts["local_steps"]),
        "calibrate_rounds": t.get("calibrate_rounds", 1),
        "calibrate_steps": t.get("calibrate_steps", counts["local_steps"]),
    }
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PlanError(f"{where}.{key}: expected a whole number >= 1, found {value!r}")
    reals = {
        k: t.get(k, d)
        for k, d in (("lr", 1e-2), ("size_budget", 0.25), ("kd_weight", 1.0), ("temperature", 2.0))
    }
    for key, value in reals.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise PlanError(f"{where}.{key}: expected a positive number, found {value!r}")
    if reals["size_budget"] > 1:
        raise PlanError(
            f"{where}.size_budget: {reals['size_budget']} is a share of the teacher; expected <= 1"
        )
    switches = {k: t.get(k, True) for k in ("trim", "calibrate")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise PlanError(f"{where}.{key}: expected true or false, found {value!r}")
    return TaskPlan(
        t["name"],
        tuple(structures),
        None if sites == "any" else tuple(sites),
        counts["min_sites"],
        counts["rounds"],
        counts["local_steps"],
        float(reals["lr"]),
        switches["trim"],
        float(reals["size_budget"]),
        counts["search_rounds"],
        counts["search_steps"],
        counts["distill_rounds"],
        counts["distill_steps"],
        float(reals["kd_weight"]),
        float(reals["temperature"]),
        switches["calibrate"],
        counts["calibrate_rounds"],
        counts["calibrate_steps"],
    )


def parse_plan(doc: dict[str, Any], where: str = "plan") -> Plan:
    """Validate a parsed plan document.

    Raises:
        PlanError: naming the field that is wrong.
    """
    model, training = doc.get("model", {}), doc.get("training", {})
    widths = model.get("encoder_widths", list(EncoderConfig.cpu_default().widths))
    try:
        encoder = EncoderConfig(tuple(int(w) for w in widths))
    except (TypeError, ValueError) as e:
        raise PlanError(f"{where}: model.encoder_widths: {e}") from None
    patch = [int(v) for v in _num_list(model, "patch", 3, f"{where}: model", [64, 64, 64])]
    if any(p % encoder.divisor for p in patch):
        raise PlanError(
            f"{where}: model.patch {patch}: sides must be multiples of {encoder.divisor}"
        )
    spacing = _num_list(model, "spacing_mm", 3, f"{where}: model", [1.5, 1.5, 1.5])
    window = _num_list(model, "hu_window", 2, f"{where}: model", [-1000.0, 1000.0])
    tasks = tuple(_task(t, f"{where}: tasks[{i}]") for i, t in enumerate(doc.get("tasks", [])))
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise PlanError(f"{where}: expected tasks with distinct names, found {names}")
    val_fraction = float(training.get("val_fraction", 0.2))
    if not 0.0 < val_fraction < 1.0:
        raise PlanError(
            f"{where}: training.val_fraction {val_fraction}: expected a value in (0, 1)"
        )
    return Plan(
        encoder,
        (patch[0], patch[1], patch[2]),
        Preprocessing((spacing[0], spacing[1], spacing[2]), (window[0], window[1])),
        int(training.get("batch_size", 2)),
        val_fraction,
        int(training.get("seed", 0)),
        int(float(training.get("max_payload_mb", 256)) * 2**20),
        tasks,
    )


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file.

    Raises:
        PlanError: naming the file and field.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PlanError(f"{path}: cannot read plan ({e})") from None
    return parse_plan(doc, str(path))
