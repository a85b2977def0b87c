"""Live faults in a loopback deployment (slow: about a minute or two each).

A SuperNode killed in the middle of a round and one frozen (SIGSTOP) there: the task still
finishes and registers from the site left. A run with no SuperNode at all ends at once with
a clear error and a failed status, instead of waiting.
"""

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.catalog import Catalog
from server.local import APP_DIR, LocalFederation
from tests.integration.flower import flower_processes, one_task_plan, site_config, wait_for

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 60  # seconds a round waits for a frozen site


def _clientapps(node):
    """The node's ClientApp processes (started below it for each message it works on)."""
    found = []
    for pid in node.children():
        try:
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # the process ended since it was listed
            continue
    return found


def _phase_started(catalog_dir, phase):
    events = Catalog(catalog_dir).events()
    return any(e["event"] == "phase-start" and e.get("phase") == phase for e in events)


def test_a_killed_and_a_frozen_node_do_not_stop_the_task(tmp_path, tiny_sites):
    sites = ["hospA", "hospB", "hospD"]
    plan = one_task_plan(tmp_path, rounds=1, steps=2, sites=sites, min_sites=1)
    catalog_dir = tmp_path / "catalog"
    config = {"plan": str(plan), "catalog": str(catalog_dir), "round-timeout": ROUND_TIMEOUT}
    nodes = [
        site_config(tiny_sites["hospA"]),
        site_config(tiny_sites["hospB"]),
        site_config(tiny_sites["hospA"], "hospD", tmp_path / "cache-hospD"),
    ]
    with (
        LocalFederation(tmp_path / "flower", simulation=False, nodes=nodes) as fed,
        ThreadPoolExecutor(1) as pool,
    ):
        killed, _, frozen = fed.nodes
        running = pool.submit(fed.run, APP_DIR, config, None, 600)
        wait_for(lambda: _phase_started(catalog_dir, "base"), 300, "the base phase's start")
        wait_for(lambda: _clientapps(killed) and _clientapps(frozen), 60, "training at the sites")
        os.killpg(killed.process.pid, signal.SIGKILL)
        os.killpg(frozen.process.pid, signal.SIGSTOP)  # the node, its SuperExec and ClientApp
        result = running.result(timeout=600)
        os.killpg(frozen.process.pid, signal.SIGCONT)
    assert result.returncode == 0, result.stderr[-2000:]
    catalog = Catalog(catalog_dir)
    assert catalog.has_task("abdomen")
    base_end = next(
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "base"
    )
    assert list(base_end["bytes_up"]) == ["hospB"] and base_end["bytes_up"]["hospB"] > 0
    assert set(base_end["rejected"]) == {"hospA", "hospD"}
    provenance = catalog.tasks()[0]["versions"][0]["provenance"]
    assert provenance["sites"] == ["hospB"]  # the silent sites were not waited for again
    assert not flower_processes(fed)


def test_a_run_without_nodes_ends_with_a_clear_error(tmp_path):
    plan = one_task_plan(tmp_path, rounds=1, steps=2)
    config = {"plan": str(plan), "catalog": str(tmp_path / "catalog")}
    with LocalFederation(tmp_path / "flower", simulation=False) as fed:
        result = fed.run(APP_DIR, config, timeout=300)
    assert result.returncode == 1
    assert "no connected site serves any unfinished task ['abdomen']; sites: none" in result.stdout
    assert "finished:failed" in result.stderr
    (end,) = [e for e in Catalog(tmp_path / "catalog").events() if e["event"] == "run-end"]
    assert end["finished"] == [] and "no connected site" in end["error"]
    assert not flower_processes(fed)
