"""Helpers shared by the integration tests that start Flower processes."""

import subprocess
import time
from pathlib import Path

from simulations.run import plan_document, to_toml
from simulations.scenario import WrittenSite, load_scenario


def flower_processes(federation=None, under=None):
    """Command lines of this test's Flower servers still running (zombies excluded).

    Only the SuperLink and SuperNodes of ``federation``, or those whose Flower home lies
    ``under`` a folder: other Flower processes (another test running in parallel) are none
    of the test's business.
    """
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    running = [line for line in out.splitlines() if "<defunct>" not in line]
    ours = (str(federation.home), federation.address) if federation is not None else (str(under),)
    return [line for line in running if "flower-super" in line and any(s in line for s in ours)]


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
