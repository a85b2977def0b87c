"""Helpers shared by the integration tests that start Flower processes."""

import os
import signal
import subprocess
import time
from pathlib import Path

from server.local import process_tree
from simulations.run import plan_document, to_toml
from simulations.scenario import WrittenSite, load_scenario


def _home(pid: int) -> str:
    """The FLWR_HOME a process runs with ('' if none, or if it ended meanwhile)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    return next((v[10:].decode() for v in environ if v.startswith(b"FLWR_HOME=")), "")


def _servers(*marks: str) -> list[tuple[int, str]]:
    """(pid, command line) of the running Flower servers whose command line, or whose
    Flower home, holds a mark.

    ``ps -ww``: without it ``ps`` cuts lines at ``$COLUMNS`` (80 under pytest).
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    rows = (line.strip().split(" ", 1) for line in out.stdout.splitlines())
    servers = [
        (int(pid), args) for pid, args in rows if "flower-super" in args and "<defunct>" not in args
    ]
    return [(pid, args) for pid, args in servers if any(m in args + _home(pid) for m in marks)]


def flower_processes(federation=None, under=None):
    """Command lines of this test's Flower servers still running (zombies excluded).

    Only the SuperLink and SuperNodes of ``federation``, or those whose Flower home lies
    ``under`` a folder: other Flower processes (another test running in parallel) are none
    of the test's business.
    """
    ours = (str(federation.home), federation.address) if federation is not None else (str(under),)
    return [args for _, args in _servers(*ours)]


def kill_servers(under: Path) -> None:
    """SIGKILL the Flower servers whose home lies ``under`` a folder, and every process
    below them (the Simulation Engine, Ray): the coordinator's machine losing power."""
    roots = [pid for pid, _ in _servers(str(under))]
    assert roots, f"no Flower server runs under {under}"
    for pgid in {pgid for _, pgid in process_tree(roots)}:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:  # the group ended since it was listed
            continue


def one_task_plan(folder: Path, rounds=1, steps=4, **task):
    """The tiny scenario's first task (abdomen) alone, untrimmed and uncalibrated."""
    doc = plan_document(load_scenario("tiny"))
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
