"""``csfl simulate``: hospitals joining one stage after another, through Flower's Simulation Engine.

The scenario's site data is written once; its ``[federation]`` table becomes the server's
task plan; then each stage is one ``flwr run`` against a local SuperLink in simulation
mode, with only that stage's sites, resuming from the catalog the last stage left. After
every stage the unified model is evaluated on the held-out cases of every task so far.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import atomic_write_bytes, atomic_write_json
from core.protocol import PRIVACY
from server.catalog import JOURNAL, Catalog
from server.local import LocalFederation
from server.local_env import APP_DIR
from server.orchestrator import last_run_summary, planned_rounds
from simulations.evaluate import evaluate_catalog, upload_summary
from simulations.progress import JournalWatcher
from simulations.scenario import TEST_FOLDER, Scenario
from simulations.sites import write_scenario

WIRE_LOG = "wire.jsonl"  # every message of the run, summarised (server.wire)
COMPLETE = ".complete"  # marks a sites folder whose phantoms are all written


PLAN = "plan.toml"  # the plan a run's server read, in the run's folder
CATALOG = "catalog"  # the run's catalog, in the run's folder


class SimulationError(RuntimeError):
    """A stage that did not finish its tasks; the message says where the logs are."""


def to_toml(doc: dict[str, Any]) -> str:
    """Tables of scalars and lists, and arrays of such tables: all a plan needs."""

    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    lines: list[str] = []
    for key, section in doc.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{key}]]" if isinstance(section, list) else f"[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


@dataclass
class SimulationReport:
    """What a simulation did: per stage its seconds and the Dice of every task so far."""

    scenario: str
    stages: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"scenario": self.scenario, "stages": self.stages}


def sites_complete(sites_dir: Path) -> bool:
    """Whether :func:`write_sites_once` finished writing this folder."""
    return (sites_dir / COMPLETE).is_file()


def write_sites_once(scenario: Scenario, sites_dir: Path, say: Callable[[str], None]) -> Path:
    """The scenario's phantoms in ``sites_dir``, written unless a finished copy is there."""
    if not sites_complete(sites_dir):
        say(f"writing the {scenario.name} scenario's site data to {sites_dir}")
        write_scenario(scenario, sites_dir)
        atomic_write_bytes(sites_dir / COMPLETE, b"")
    return sites_dir


def link_sites(run: Path, sites: Path) -> Path:
    """``run/sites`` as a link to phantoms already written (a run that draws none itself)."""
    target = run / "sites"
    if not target.exists():
        run.mkdir(parents=True, exist_ok=True)
        target.symlink_to(sites.resolve(), target_is_directory=True)
    return target


def finished_stages(out: Path, scenario: Scenario) -> dict[int, dict[str, Any]]:
    """The stages an earlier start of this simulation finished, from its ``results.json``.

    A stage counts when its entry names this scenario's tasks and sites for it and the
    catalog holds all those tasks; an unreadable file counts for nothing (the stages run
    again, resuming from the catalog).
    """
    try:
        doc = json.loads((out / "results.json").read_text())
        entries = {int(e["stage"]): e for e in doc["stages"] if doc["scenario"] == scenario.name}
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    catalog = Catalog(out / CATALOG)
    kept = {}
    for stage, entry in entries.items():
        tasks, sites = scenario.stage_members(stage)
        same = [entry.get("tasks"), entry.get("sites")] == [tasks, sites]
        if same and all(catalog.has_task(t) for t in tasks):
            kept[stage] = entry
    return kept


def site_slots(cores: int, sites: int) -> tuple[int, int]:
    """Torch threads per simulated site, and how many of a stage's sites run at once.

    Each site gets its share of the cores (one thread at least), and up to two sites a
    core run side by side: three sites on two cores all run at once, the OS sharing the
    cores, instead of two and then the third alone on one core while the other idles
    (the ``default`` scenario's first stage: 151 -> 129 s at two rounds, 2 cores).
    """
    share = max(1, cores // sites)
    return share, max(cores // share, min(sites, 2 * cores))


def simulate(
    scenario: Scenario,
    out: Path,
    say: Callable[[str], None] = print,
    cpus: int | None = None,
    score: bool = True,
) -> SimulationReport:
    """Run every stage of a scenario; results go to ``OUT/results.json``.

    After each stage the catalog's decoders are scored on the scenario's test sets
    (``score``; a caller whose tasks have no test set of their own scores them itself).

    Started again after an interruption, it keeps the stages an earlier start finished
    (:func:`finished_stages`) and resumes the first unfinished one from the catalog.
    The simulated sites share ``cpus`` cores (default: all the machine's) as
    :func:`site_slots` says.

    Raises:
        SimulationError: if a stage's run fails or leaves one of its tasks unfinished.
    """
    out = out.resolve()
    sites_dir, catalog_dir = write_sites_once(scenario, out / "sites", say), out / CATALOG
    parsed = scenario.plan
    plan_path = atomic_write_bytes(out / PLAN, to_toml(parsed.document()).encode())
    report = SimulationReport(scenario.name)
    finished = finished_stages(out, scenario)
    cores = cpus or os.cpu_count() or 1
    with LocalFederation(out / "flower", simulation=True) as federation:
        for stage in scenario.stages:
            if stage in finished:
                say(f"stage {stage}: finished by an earlier start; kept")
                report.stages.append(finished[stage])
                continue
            tasks, sites = scenario.stage_members(stage)
            say(f"stage {stage}: tasks {tasks} at sites {sites}")
            start = time.perf_counter()
            share, at_once = site_slots(cores, len(sites))
            run_config = {
                "plan": str(plan_path),
                "catalog": str(catalog_dir),
                "sim-sites": ",".join(sites),
                "sim-data-root": str(sites_dir),
                "sim-cache-root": str(out / "site-caches"),
                "threads": share,
                "wire-log": str(out / WIRE_LOG),
            }
            engine = {
                "num-supernodes": len(sites),
                "client-resources-num-cpus": share,
                "init-args-num-cpus": at_once * share,  # Ray runs this many sites at once
            }
            rounds = sum(planned_rounds(parsed.task(t), t == parsed.tasks[0].name) for t in tasks)
            watcher = JournalWatcher(catalog_dir / JOURNAL, rounds, say)
            result = federation.run(APP_DIR, run_config, engine, watch=watcher)
            atomic_write_bytes(out / f"stage-{stage}.log", (result.stdout + result.stderr).encode())
            catalog = Catalog(catalog_dir)
            for line in last_run_summary(catalog.events(), tasks):
                say(f"  {line}")
            missing = [t for t in tasks if not catalog.has_task(t)]
            if result.returncode != 0 or missing:
                log = out / f"stage-{stage}.log"
                raise SimulationError(
                    f"stage {stage}: exit code {result.returncode}, unfinished {missing}; see {log}"
                )
            seconds = time.perf_counter() - start
            dice = evaluate_catalog(catalog, scenario, sites_dir / TEST_FOLDER) if score else {}
            uploads = upload_summary(catalog)
            privacy = {
                t["name"]: t["versions"][-1]["provenance"][PRIVACY]
                for t in catalog.tasks()
                if PRIVACY in t["versions"][-1]["provenance"]
            }
            report.stages.append(
                {
                    "stage": stage,
                    "tasks": tasks,
                    "sites": sites,
                    "seconds": round(seconds, 1),
                    "dice": dice,
                    "uploads": uploads,
                    "privacy": privacy,
                }
            )
            atomic_write_json(out / "results.json", report.to_json())
            say(f"stage {stage} done in {seconds:.0f} s")
    return report
