"""``csfl privacy-curve``: what per-patient differential privacy costs in Dice and buys.

The scenario is simulated once without DP and once per target epsilon, with the same
plan but for each task's privacy: DP-SGD in every phase that reads its patients, with the
noise multiplier that spends the target over all of them at the task's site with the
highest sampling rates (the fewest training cases), composed by Opacus's RDP accountant,
the accountant the sites count with. Every other site of the task spends less. The
clipping norm and delta are the plan's.

Each finished run is scored (mean Dice per task of its own decoder and of the merged
model, :func:`core.scores.task_mean`) and attacked by membership inference
(:mod:`simulations.benchmarks.membership`). Every setting's run keeps its folder
(``OUT/no_dp``, ``OUT/epsilon_<e>``; the phantoms are drawn once, in ``OUT/sites``) and
resumes as ``csfl simulate`` does; a finished setting's row is kept in
``OUT/<setting>.json`` and not run again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.data.dataset import validation_count
from core.io import atomic_write_json
from core.local.private import sample_rate, spent_epsilon
from core.local.search import LocalSearchSettings
from core.phases import CALIBRATE, DISTILL, SEARCH, TEACHER
from core.scores import task_mean
from server.plan import Plan, TaskPlan, parse_plan
from simulations.benchmarks.membership import privacy_audit, spent
from simulations.run import link_sites, simulate, write_sites_once
from simulations.scenario import Scenario

NO_DP = "no_dp"


def setting_name(epsilon: float | None, public: Sequence[str] = ()) -> str:
    """A setting's folder: ``no_dp``, ``epsilon_<e>`` or ``epsilon_<e>_public_<tasks>``."""
    if epsilon is None:
        return NO_DP
    return f"epsilon_{epsilon:g}" + (f"_public_{'_'.join(public)}" if public else "")


def planned_runs(plan: Plan, task: TaskPlan, cases: int) -> list[tuple[float, int]]:
    """Every DP-SGD run (sampling rate, steps) a private ``task`` makes at a site of ``cases``.

    As the phases count them in the site's ledger: the training rounds, and with trimming
    the search (its weights on one half of the cases, its architecture, after the warm-up,
    on the other) and distillation, and with calibration its rounds.
    """
    batch = plan.training.batch_size
    training = task.of(TEACHER)
    runs = [(sample_rate(batch, cases), training.rounds * training.steps)]
    if task.section.trim:
        search, distill = task.of(SEARCH), task.of(DISTILL)
        arch = validation_count(cases, 0.5)
        halves = (cases - arch, arch) if cases > 1 else (cases, cases)
        local = LocalSearchSettings(plan.train_settings(task, search.steps), budget=1)
        arch_steps = sum(map(local.steps_architecture, range(search.steps)))
        runs += [
            (sample_rate(batch, halves[0]), search.rounds * search.steps),
            (sample_rate(batch, halves[1]), search.rounds * arch_steps),
            (sample_rate(batch, cases), distill.rounds * distill.steps),
        ]
    if task.section.calibrate:
        calibrate = task.of(CALIBRATE)
        runs.append((sample_rate(batch, cases), calibrate.rounds * calibrate.steps))
    return runs


def noise_multiplier(epsilon: float, delta: float, runs: Sequence[tuple[float, int]]) -> float:
    """The smallest DP-SGD noise (to 0.5%) at which ``runs`` spend at most ``epsilon`` at ``delta``.

    Opacus's RDP accountant composes the runs (:func:`core.local.private.spent_epsilon`);
    the noise is found by bisection, as Opacus's ``get_noise_multiplier`` finds it for one.
    """
    low, high = 0.0, 1.0
    while spent_epsilon([(high, q, n) for q, n in runs], delta) > epsilon:
        low, high = high, 2 * high
    while high - low > 5e-3 * high:
        middle = (low + high) / 2
        if spent_epsilon([(middle, q, n) for q, n in runs], delta) > epsilon:
            low = middle
        else:
            high = middle
    return high


def private_plan(scenario: Scenario, epsilon: float, public: Sequence[str] = ()) -> Plan:
    """The scenario's plan with every task but ``public`` under DP-SGD spending ``epsilon``.

    The noise spends ``epsilon`` over all of a task's phases at its site with the fewest
    training cases (the highest sampling rates); every other site spends less.

    Raises:
        ValueError: if the plan refuses DP for a task (FedProx): the message names the key;
            or ``public`` names a task the scenario does not have.
    """
    plan = scenario.plan
    unknown = sorted(set(public) - {t.name for t in plan.tasks})
    if unknown:
        raise ValueError(f"public tasks {unknown}: expected some of {[t.name for t in plan.tasks]}")
    for task in plan.tasks:
        if task.name in public:
            continue
        fewest = min(
            site.cases - validation_count(site.cases, plan.training.val_fraction)
            for site in scenario.sites_of(task.name)
        )
        runs = planned_runs(plan, task, fewest)
        sigma = noise_multiplier(epsilon, task.privacy.delta, runs)
        private = dataclasses.replace(task.privacy, noise_multiplier=sigma, epsilon_budget=epsilon)
        plan = plan.with_task(dataclasses.replace(task, privacy=private))
    return parse_plan(plan.document(), f"scenario {scenario.name} at epsilon {epsilon:g}")


def _row(report: dict[str, Any], audit: dict[str, Any]) -> dict[str, Any]:
    """A setting's figures: Dice per task (decoder, merged), seconds, epsilons, attacks."""
    seconds = sum(stage["seconds"] for stage in report["stages"])
    last = report["stages"][-1]
    dice = {
        task: {
            kind: task_mean({s: v[kind] for s, v in scores.items()})
            for kind in ("decoder", "merged")
        }
        for task, scores in last["dice"].items()
    }
    return {"dice": dice, "seconds": round(seconds, 1), "audit": audit}


def privacy_curve(
    scenario: Scenario,
    epsilons: Sequence[float],
    out: Path,
    say: Callable[[str], None] = print,
    cpus: int | None = None,
    public: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Simulate and audit the scenario without DP and at each epsilon; see the module doc.

    ``public`` tasks train without DP in the private settings too (e.g. the first task,
    whose encoder every later task shares).

    Returns:
        ``{setting: {"dice": {task: {"decoder", "merged"}}, "seconds", "audit"}}``.

    Raises:
        ValueError: before any run, if the plan refuses DP for a task.
    """
    specs = {setting_name(None): scenario} | {
        setting_name(e, public): dataclasses.replace(
            scenario, plan=private_plan(scenario, e, public)
        )
        for e in sorted(epsilons, reverse=True)
    }
    rows: dict[str, dict[str, Any]] = {}
    sites = out / "sites"  # one drawing of the phantoms, linked into every setting's run
    for name, spec in specs.items():
        kept = out / f"{name}.json"
        if kept.is_file():
            rows[name] = json.loads(kept.read_text(encoding="utf-8"))
            say(f"{name}: kept from an earlier run")
            continue
        say(f"{name}: simulating {scenario.name}")
        link_sites(out / name, write_sites_once(scenario, sites, say))
        report = simulate(spec, out / name, say, cpus).to_json()
        rows[name] = _row(report, privacy_audit(out / name, spec))
        atomic_write_json(kept, rows[name])
    return rows


def format_curve(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: per setting and task, Dice (own decoder, merged), epsilon and the attack."""
    lines = [
        "| setting | task | epsilon spent (largest site) | own decoder | merged | "
        "attack AUC (coordinator / bundle) | TPR at 1% FPR | members | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, row in rows.items():
        for task, dice in row["dice"].items():
            audit = row["audit"][task]
            coordinator, bundle = audit["coordinator"], audit["bundle"]
            cells = [
                setting,
                task,
                spent(audit["privacy"]),
                "-" if dice["decoder"] is None else f"{dice['decoder']:.3f}",
                "-" if dice["merged"] is None else f"{dice['merged']:.3f}",
                f"{coordinator['auc']:.2f} / {bundle['auc']:.2f}",
                f"{coordinator['tpr_at_low_fpr']:.2f}",
                f"{coordinator['members']}",
                f"{row['seconds'] / 60:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
