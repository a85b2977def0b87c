"""A loopback deployment with TLS, SuperNode authentication and live faults (slow).

One federation and one run serve most tests of the module (their ``deployment`` fixture):
over TLS with SuperNode authentication, every SuperNode connecting through the fleet gate
(the SuperLink itself listens only for the coordinator), the honest hospB trains; hospA is
killed and hospD frozen (SIGSTOP) in the middle of the first round, and the task still
finishes and registers from hospB alone; an impostor registered as hospE calls itself hospB; a node
whose key was never registered is refused; a node that only runs apps signed by an entity
it trusts refuses ours; a hospital's ``flwr`` pointed at the gate can neither register a
key, nor start a run, nor list runs or nodes. Certificates and keys are made fresh by
``LocalFederation(tls=True)``. Before any node starts, a first run on the same SuperLink
finds no SuperNode at all: it ends at once with a clear error and a failed status,
instead of waiting.
"""

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from server.catalog import Catalog
from server.credentials import write_node_key
from server.local import CONNECTION, LocalFederation
from server.local_env import APP_DIR, flower_env, stage_app
from tests.integration.flower import flower_processes, one_task_plan, site_config, wait_for

pytestmark = pytest.mark.slow
shared = pytest.mark.xdist_group("deployment")  # the tests that read the one shared run

ROUND_TIMEOUT = 60  # seconds a round waits for the frozen site


def _trusted_entities(path):
    """A ``--trusted-entities`` file naming one Ed25519 key (which signed nothing)."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.write_text(yaml.safe_dump({"fpk_csfl_test": line.decode()}))
    return path


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


def _from_a_hospital(fed, home):
    """What a hospital's ``flwr`` gets from the gate: register, run, ls, supernode ls."""
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{fed.node_address}"\n'
        f'root-certificates = "{fed.credentials.ca_certificate}"\n'
    )
    key = write_node_key(home / "keys", "rogue")
    app = stage_app(APP_DIR, home / "app")
    commands = {
        "register": ["supernode", "register", str(key.public_key), CONNECTION, "--name", "hospR"],
        "run": ["run", str(app), CONNECTION],
        "ls": ["ls", CONNECTION],
        "supernode ls": ["supernode", "ls", CONNECTION],
    }
    env = flower_env(home)
    return {
        name: subprocess.run(["flwr", *args], env=env, capture_output=True, timeout=120)
        for name, args in commands.items()
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_sites):
    tmp = tmp_path_factory.mktemp("deployment")
    plan = one_task_plan(tmp, rounds=1, steps=2, sites=["hospA", "hospB", "hospD"], min_sites=1)
    catalog_dir = tmp / "catalog"
    config = {
        "plan": str(plan),
        "catalog": str(catalog_dir),
        "round-timeout": ROUND_TIMEOUT,
        "threads": 1,  # each ClientApp one core, as on a shared test machine
    }
    nodes = [
        site_config(tiny_sites["hospA"]),
        site_config(tiny_sites["hospB"]),
        site_config(tiny_sites["hospA"], "hospD", tmp / "cache-hospD"),
    ]
    alone = tmp / "alone"
    alone.mkdir()
    alone_plan = one_task_plan(alone, rounds=1, steps=2)
    alone_config = {"plan": str(alone_plan), "catalog": str(alone / "catalog")}
    with (
        LocalFederation(tmp / "flower", simulation=False, tls=True, gate=True) as fed,
        ThreadPoolExecutor(1) as pool,
    ):
        without_nodes = fed.run(APP_DIR, alone_config, timeout=300)
        killed, honest, frozen = (fed.add_node(config) for config in nodes)
        impostor = fed.add_node(
            site_config(tiny_sites["hospB"], cache=tmp / "cache-impostor"), register_as="hospE"
        )
        unregistered = fed.add_node(site_config(tiny_sites["hospA"]), register_as=None)
        verifier = fed.add_node(
            site_config(tiny_sites["hospC"]),
            extra_args=["--trusted-entities", str(_trusted_entities(tmp / "trusted.yaml"))],
        )
        fed.wait_online([killed, honest, frozen, impostor, verifier])
        running = pool.submit(fed.run, APP_DIR, config, None, 600)
        wait_for(lambda: _phase_started(catalog_dir, "base"), 300, "the base phase's start")
        wait_for(lambda: _clientapps(killed) and _clientapps(frozen), 60, "training at the sites")
        os.killpg(killed.process.pid, signal.SIGKILL)
        os.killpg(frozen.process.pid, signal.SIGSTOP)  # the node, its SuperExec and ClientApp
        result = running.result(timeout=600)
        os.killpg(frozen.process.pid, signal.SIGCONT)
        unregistered.process.wait(timeout=60)
        from_hospital = _from_a_hospital(fed, tmp / "hospital")
        runs_after = fed._flwr_json("ls", CONNECTION)["runs"]
        nodes_after = fed._flwr_json("supernode", "ls", CONNECTION)["nodes"]
        registered = {node.node_id for node in fed.nodes if node.node_id is not None}
    return SimpleNamespace(
        from_hospital=from_hospital,
        runs_after=runs_after,
        nodes_after={int(node["node-id"]) for node in nodes_after},
        registered=registered,
        gate_log=(tmp / "flower" / "gate.log").read_text(),
        result=result,
        without_nodes=without_nodes,
        alone=Catalog(alone / "catalog"),
        catalog=Catalog(catalog_dir),
        impostor=impostor,
        unregistered=unregistered,
        verifier=verifier,
        leftover=flower_processes(fed),
    )


@shared
def test_a_killed_and_a_frozen_node_do_not_stop_a_task_trained_over_tls(deployment):
    # trained and registered from hospB alone; the run says so and does not complete
    result = deployment.result
    assert result.returncode == 1 and "finished:failed" in result.stderr, result.stderr[-2000:]
    summary = "abdomen: partial, by hospB (planned: hospA, hospB, hospD); without hospA, hospD"
    assert summary in result.stdout
    catalog = deployment.catalog
    assert catalog.has_task("abdomen")
    base_end = next(
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "base"
    )
    assert list(base_end["bytes_up"]) == ["hospB"] and base_end["bytes_up"]["hospB"] > 0
    assert set(base_end["rejected"]) == {"hospA", "hospD"}
    provenance = catalog.tasks()[0]["versions"][0]["provenance"]
    assert provenance["sites"] == ["hospB"]  # the silent sites were not waited for again
    assert provenance["bytes_up"]["hospB"] > 0
    assert not deployment.leftover


@shared
def test_an_unregistered_node_is_refused(deployment):
    assert deployment.unregistered.process.returncode != 0
    assert "Exit Code: 305" in deployment.unregistered.log.read_text()


@shared
def test_a_node_registered_under_another_site_name_is_refused(deployment):
    # the name given to `flwr supernode register --name` reaches the ServerApp (NodeInfo.name)
    line = f"node {deployment.impostor.node_id} is registered as 'hospE' but calls itself 'hospB'"
    assert line in deployment.result.stdout
    (start,) = [e for e in deployment.catalog.events() if e["event"] == "run-start"]
    assert start["sites"] == ["hospA", "hospB", "hospD"]


@shared
def test_an_unsigned_app_is_refused_by_a_node_that_verifies_apps(deployment):
    assert "The FAB could not be verified" in deployment.verifier.log.read_text()
    assert (
        f"node {deployment.verifier.node_id} could not describe itself" in deployment.result.stdout
    )


@shared
def test_a_run_without_nodes_ends_with_a_clear_error(deployment):
    result = deployment.without_nodes
    assert result.returncode == 1
    assert "no connected site serves any unfinished task ['abdomen']; sites: none" in result.stdout
    assert "finished:failed" in result.stderr
    (end,) = [e for e in deployment.alone.events() if e["event"] == "run-end"]
    assert end["finished"] == [] and "no connected site" in end["error"]


@shared
def test_a_hospital_cannot_register_keys_or_start_runs_through_the_gate(deployment):
    for name, result in deployment.from_hospital.items():
        assert result.returncode != 0, name
    for call in ("register-node", "start-run", "list-runs", "list-nodes"):
        assert f"refused POST /v1/control/{call}" in deployment.gate_log
    assert len(deployment.runs_after) == 2  # the coordinator's two runs, nothing else
    assert deployment.nodes_after == deployment.registered  # the hospital's key is not there
