"""Helpers shared by the integration tests that start Flower processes."""

import os
import signal
import subprocess
import time
from pathlib import Path

from server.processes import home_processes, process_groups, process_tree
from simulations.run import to_toml
from simulations.scenario import load_scenario
from simulations.sites import WrittenSite


def _servers(under: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the running Flower servers whose Flower home lies ``under``
    a folder (``ps -ww``: without it ``ps`` cuts lines at ``$COLUMNS``, 80 under pytest)."""
    ours = set(home_processes(under))
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    rows = (line.strip().split(" ", 1) for line in out.stdout.splitlines())
    return [
        (int(pid), args)
        for pid, args in rows
        if int(pid) in ours and "flower-super" in args and "<defunct>" not in args
    ]


def flower_processes(federation=None, under=None):
    """Command lines of this test's Flower servers still running (zombies excluded).

    Only the SuperLink and SuperNodes (and their SuperExecs) of ``federation``, or those
    whose Flower home lies ``under`` a folder: other Flower processes (another test running
    in parallel) are none of the test's business.
    """
    return [args for _, args in _servers(federation.home if federation is not None else under)]


def kill_servers(under: Path) -> None:
    """SIGKILL the Flower servers whose home lies ``under`` a folder, and every process
    below them (the Simulation Engine, Ray): the coordinator's machine losing power."""
    roots = [pid for pid, _ in _servers(under)]
    assert roots, f"no Flower server runs under {under}"
    for pgid in process_groups(process_tree(roots)):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:  # the group ended since it was listed
            continue


def one_task_plan(folder: Path, rounds=1, steps=4, **task):
    """The tiny scenario's first task (abdomen) alone, untrimmed and uncalibrated.

    As a hospital's plan: a run that loses a named site does not complete.
    """
    doc = load_scenario("tiny").plan.document()
    doc["training"]["partial_runs"] = False
    doc["tasks"] = doc["tasks"][:1]
    doc["tasks"][0].update(rounds=rounds, local_steps=steps, trim=False, calibrate=False, **task)
    path = folder / "plan.toml"
    path.write_text(to_toml(doc))
    return path


def site_config(data: WrittenSite, name=None, cache=None):
    """A SuperNode's node config for a written site's data, optionally under another name."""
    config = {"site": name or data.site, "data-dir": str(data.dataset.root.parent)}
    if cache is not None:  # two nodes reading the same data keep separate caches
        config["cache-dir"] = str(cache)
    return config


def wait_for(condition, timeout, what):
    """Poll ``condition`` every 0.25 s; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.25)
