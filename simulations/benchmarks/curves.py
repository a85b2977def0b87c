"""``csfl curve``: learning curves, to find the budget at which a method stops improving.

A method is trained on a task at budgets ``N, 2N, 4N, ...`` steps; each budget is its
own run from the same seed with its own learning-rate schedule (what "trained for that
budget" means), scored by mean Dice on the task's held-out cases. The curve stops when
doubling the budget adds less than the tolerance; that budget's half is the task's
**plateau budget** (the smallest budget whose doubling adds less than the tolerance).
``csfl benchmark --budget plateau`` gives every method the upper bound's plateau budget.

Every finished budget is kept in ``OUT/curve-<method>-<task>.json`` at once, so a rerun
trains only the budgets still missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Generic, Literal, TypeVar, get_args

from core.io import atomic_write_json
from core.scores import task_mean

CurveMethod = Literal["upper_bound", "joint", "decoder", "federated"]
CURVE_METHODS: tuple[str, ...] = get_args(CurveMethod)
# the benchmark's budgets: the scenario's rounds, or each task's plateau from its curve
Budget = Literal["scenario", "plateau"]
ALL_TASKS = "all"  # the joint model's curve scored on every task
Dice = dict[str, dict[str, float | None]]  # task -> structure -> mean Dice
Model = TypeVar("Model")
IDENTITY = ("method", "task", "scenario", "seed", "settings")  # one such run per curve file


@dataclass(frozen=True)
class CurveSettings:
    """The budgets tried and the stopping rule.

    Attributes:
        start_steps: the first budget ``N``.
        max_doublings: at most ``K`` doublings: budgets ``N`` to ``N * 2**K``.
        tolerance: a doubling that adds less mean Dice than this ends the curve.
    """

    start_steps: int = 250
    max_doublings: int = 4
    tolerance: float = 0.01

    def budgets(self) -> list[int]:
        """Every budget the curve may train, in order."""
        return [self.start_steps * 2**k for k in range(self.max_doublings + 1)]


@dataclass(frozen=True)
class Trainer(Generic[Model]):
    """How a method trains for a budget and how its model is scored.

    Attributes:
        train: trains a fresh model for that many steps.
        score: Dice per task and structure on held-out cases.
        cpu_clock: CPU seconds so far of whatever trains (default: this process,
            :func:`time.process_time`).
    """

    train: Callable[[int], Model]
    score: Callable[[Model], Dice]
    cpu_clock: Callable[[], float] = time.process_time


def duration(seconds: float) -> str:
    """A time span for a progress line: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def machine_cpu_seconds() -> float:
    """CPU seconds every core of this machine has been busy since boot (Linux ``/proc/stat``).

    A federated method trains in Flower's processes (SuperLink, the Simulation Engine and
    its Ray workers), which are not all this process's children: on a machine that runs
    nothing else, the machine's busy time over the training is its CPU time.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def curve_path(out: Path, method: str, task: str) -> Path:
    """The curve's JSON file; its PNG has the same stem."""
    return out / f"curve-{method}-{task}.json"


def mean_dice(dice: Dice) -> float:
    """Mean over tasks of each task's mean Dice (:func:`core.local.evaluation.task_mean`).

    Raises:
        ValueError: if a task has no scored structure.
    """
    means = []
    for task, structures in dice.items():
        mean = task_mean(structures)
        if mean is None:
            raise ValueError(f"{task}: no structure was scored on the held-out cases")
        means.append(mean)
    return fmean(means)


def _load(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The curve file's document, or a new one; refuses a file of another run."""
    if not path.is_file():
        return {**identity, "points": [], "plateau_steps": None}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc.setdefault("settings", {})  # (curves made before --set)
        stored = {k: doc[k] for k in IDENTITY}
        doc["points"] = [
            {**p, "steps": int(p["steps"]), "mean_dice": float(p["mean_dice"])}
            for p in doc["points"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected a curve file ({e})") from None
    if stored != identity:
        raise ValueError(f"{path}: a curve of {stored}, not of {identity}; use another --out")
    return dict(doc)


def learning_curve(
    path: Path,
    identity: dict[str, Any],
    trainer: Trainer[Model],
    settings: CurveSettings,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train at doubling budgets until a doubling adds less than the tolerance.

    Args:
        path: the curve's JSON file (read first: budgets already there are not rerun).
        identity: what the curve is of (:data:`IDENTITY` keys); a file of another is refused.
        trainer: trains and scores the method.
        settings: budgets and the stopping rule.
        say: progress lines.

    Returns:
        The curve document (also written to ``path``): ``points`` (per budget: steps,
        CPU seconds of the training (the trainer's ``cpu_clock``), wall seconds, mean Dice,
        Dice per task and structure) and ``plateau_steps`` (``None`` if no doubling
        tried added less than the tolerance).
    """
    doc = _load(path, identity)
    done = {int(p["steps"]): p for p in doc["points"]}
    budgets = settings.budgets()
    for k, steps in enumerate(budgets):
        point = done.get(steps)
        if point is None:
            say(f"{path.stem}: training {steps} steps")
            cpu, wall = trainer.cpu_clock(), time.perf_counter()
            model = trainer.train(steps)
            cpu, wall = trainer.cpu_clock() - cpu, time.perf_counter() - wall
            dice = trainer.score(model)
            point = {
                "steps": steps,
                "cpu_seconds": round(cpu, 1),
                "wall_seconds": round(wall, 1),
                "mean_dice": mean_dice(dice),
                "dice": dice,
            }
            done[steps] = point
            doc["points"] = [done[s] for s in sorted(done)]
            atomic_write_json(path, doc)
        else:
            say(f"{path.stem}: reusing {steps} steps")
        gain = point["mean_dice"] - done[budgets[k - 1]]["mean_dice"] if k else None
        shown = "" if gain is None else f" ({gain:+.3f})"
        say(f"{path.stem}: {steps} steps: mean Dice {point['mean_dice']:.3f}{shown}")
        if gain is not None and gain < settings.tolerance:
            break
        left = [s for s in budgets[k + 1 :] if s not in done]
        if left:
            each = [point["wall_seconds"] * s / steps for s in left]  # time grows with steps
            say(
                f"{path.stem}: next {left[0]} steps, about {duration(each[0])}; "
                f"at most {duration(sum(each))} to {left[-1]} steps"
            )
    plateau = stored_plateau(done, settings.tolerance)
    doc["plateau_steps"] = plateau
    atomic_write_json(path, doc)
    say(
        f"{path.stem}: plateau at {plateau} steps"
        if plateau is not None
        else f"{path.stem}: no plateau within {budgets[-1]} steps (raise --max-doublings)"
    )
    return doc


def stored_plateau(done: dict[int, dict[str, Any]], tolerance: float) -> int | None:
    """The smallest kept budget whose doubling, also kept, added less than the tolerance.

    Read from every kept budget, so a single budget trained into a finished curve's
    file keeps the curve's plateau.
    """
    for steps in sorted(done):
        twice = done.get(2 * steps)
        if twice is not None and twice["mean_dice"] - done[steps]["mean_dice"] < tolerance:
            return steps
    return None


def plateau_budgets(curves_dir: Path, method: str = "upper_bound") -> dict[str, int]:
    """Each task's plateau budget from the finished curves of ``method`` in a folder.

    Tasks whose curve found no plateau are left out.

    Raises:
        ValueError: for a curve file that cannot be read.
    """
    out = {}
    for path in sorted(curves_dir.glob(curve_path(Path(), method, "*").name)):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            task, plateau, stored = doc["task"], doc["plateau_steps"], doc["method"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected a curve file ({e})") from None
        if stored == method and isinstance(plateau, int) and plateau > 0:
            out[str(task)] = plateau
    return out


def plot_curve(doc: dict[str, Any], path: Path) -> Path:
    """Mean Dice against steps and against CPU seconds (log-x), the plateau marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = doc["points"]
    dice = [p["mean_dice"] for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in zip(
        axes, ("steps", "cpu_seconds"), ("optimiser steps", "CPU seconds of training"), strict=True
    ):
        xs = [p[key] for p in points]
        ax.plot(xs, dice, marker="o")
        ax.set(xlabel=label, ylabel="mean Dice, held-out cases", ylim=(0, 1))
        if min(xs, default=0) > 0:  # (a CPU time too short to measure cannot be log-scaled)
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    budgets = [p["steps"] for p in points]
    axes[0].set_xticks(budgets, [str(s) for s in budgets])  # the budgets themselves, not 10^k
    axes[0].minorticks_off()
    if doc["plateau_steps"] is not None:
        axes[0].axvline(doc["plateau_steps"], color="grey", linestyle="--", label="plateau")
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{doc['method']} on {doc['task']} ({doc['scenario']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
