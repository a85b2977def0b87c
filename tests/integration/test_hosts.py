"""The deployment recipe across hosts: a coordinator and hospitals in network namespaces.

Slow, and apart from the default suite (``hosts`` marker: ``pytest -m hosts``); needs root
and ``ip netns`` (skipped otherwise). One deployment serves the module: the coordinator's
namespace holds the SuperLink (TLS, SuperNode authentication, on its own loopback) and the
fleet gate on its address; hospA, hospB and an impostor each have a namespace (and an
``/etc/hosts``) of their own, reach the gate as ``superlink.test`` (the certificate names
that host and its address), and authenticate with a key made at the hospital and
registered by the coordinator. From a hospital, ``flwr`` gets nothing through the gate.
One run (one task, two rounds, ``min_sites = 2``) weathers a short cut of hospB's link
in round 1 (below Flower's offline detection: nothing is lost) and, in round 2, a cut of
hospB's link until the SuperLink has seen it offline while hospA's SuperNode is killed
(SIGKILL) and restarted by a supervisor-like loop that retries while Flower refuses it
(exit code 305): both rejoin, the round is sent again, and the run completes with the task
trained by both; the impostor registered as hospE that calls itself hospB is refused.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.catalog import Catalog
from server.credentials import write_node_key, write_server_credentials
from server.local import COMPLETED, CONNECTION, NODE_CONNECTED
from server.local_env import APP_DIR, flower_env, overrides, stage_app
from server.processes import process_tree
from simulations.run import to_toml
from tests.integration import netns
from tests.integration.flower import one_task_plan, site_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.hosts, pytest.mark.xdist_group("hosts")]

REASON = netns.unavailable()
if REASON:
    pytest.skip(f"multi-host tests: {REASON}", allow_module_level=True)

HOST = "superlink.test"  # the coordinator, as hospitals name it
LINK_PORT = 9000  # the SuperLink, on the coordinator's loopback
GATE_PORT = 9092  # the fleet gate, on the coordinator's address
SITES = {"hospa": "hospA", "hospb": "hospB", "hospe": "hospE"}  # namespace -> registered name
SHORT_CUT_S = 8.0  # well below Flower's offline detection (2 heartbeats of 30 s)
GRACE_S = 150.0  # [training] rejoin_grace_s: above the long cut (about 40-60 s)
RESTART_EVERY_S = 5.0  # the supervisor's pause between two starts of a SuperNode
UP_FOR_S = 3.0  # a restarted SuperNode that is connected and alive this long is up


class Deployment:
    """The parties' processes and Flower homes, with the ``flwr`` CLI of each."""

    def __init__(self, hosts: netns.Hosts, tmp: Path, tiny_sites: dict) -> None:
        self.hosts = hosts
        self.tmp = tmp
        self.home = tmp / "coordinator"
        self.home.mkdir()
        self.credentials = write_server_credentials(
            self.home / "tls", hosts=[HOST, hosts.address["coord"]]
        )
        self.env = flower_env(self.home)
        self.write_connection(self.home, f"127.0.0.1:{LINK_PORT}")
        self.node_configs = {
            "hospa": site_config(tiny_sites["hospA"]),
            "hospb": site_config(tiny_sites["hospB"]),
            "hospe": site_config(tiny_sites["hospB"], cache=tmp / "cache-impostor"),
        }
        self.keys: dict[str, Path] = {}
        self.node_ids: dict[str, int] = {}
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.starts = dict.fromkeys(SITES, 0)
        self.app = stage_app(APP_DIR, tmp / "app")

    def write_connection(self, home: Path, address: str) -> None:
        """A ``config.toml`` whose default connection is ``address`` with our CA."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{address}"\nroot-certificates = "{self.credentials.ca_certificate}"\n'
        )

    def flwr(self, *args: str, party: str = "coord", home: Path | None = None, timeout=120):
        """The ``flwr`` CLI in a party's namespace (the coordinator's home by default)."""
        env = flower_env(home or self.home) | {"COLUMNS": "500"}
        return self.hosts.run(party, ["flwr", *args], env, timeout)

    def flwr_json(self, *args: str) -> dict:
        result = self.flwr(*args, "--format", "json")
        answer = json.loads(result.stdout or "{}")
        assert result.returncode == 0 and answer.get("success"), (args, result)
        return answer

    def start_link(self) -> None:
        c = self.credentials
        tls = ["--ssl-ca-certfile", str(c.ca_certificate), "--ssl-certfile", str(c.certificate)]
        tls += ["--ssl-keyfile", str(c.private_key)]
        self.hosts.popen(
            "coord",
            [
                *("flower-superlink", *tls, "--enable-supernode-auth"),
                *("--disable-runtime-dependency-installation", "--host", "127.0.0.1"),
                *("--port", str(LINK_PORT), "--database", ":flwr-in-memory:"),
            ],
            self.env,
            self.home / "superlink.log",
        )
        self.wait_healthy("coord", f"https://127.0.0.1:{LINK_PORT}/health")
        listen = f"{self.hosts.address['coord']}:{GATE_PORT}"
        self.hosts.popen(
            "coord",
            [
                "csfl",
                "fleet-gate",
                "--listen",
                listen,
                "--superlink",
                f"127.0.0.1:{LINK_PORT}",
                *tls,
            ],
            self.env,
            self.home / "gate.log",
        )
        # from a hospital: the gate's name resolves, and its certificate names it
        self.wait_healthy("hospa", f"https://{HOST}:{GATE_PORT}/health")

    def wait_healthy(self, party: str, url: str, timeout: float = 60.0) -> None:
        probe = (
            "import ssl, sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2,"
            " context=ssl.create_default_context(cafile=sys.argv[2]))"
        )
        ca = str(self.credentials.ca_certificate)
        deadline = time.monotonic() + timeout
        while True:
            done = self.hosts.run(party, [sys.executable, "-c", probe, url, ca], self.env)
            if done.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{url} from {party}: {done.stderr[-500:]}"
            time.sleep(0.5)

    def enrol(self, party: str) -> None:
        """The hospital makes its key pair; the coordinator registers the public key."""
        home = self.tmp / party
        key = write_node_key(home / "keys", SITES[party])
        shutil.copy(self.credentials.ca_certificate, home / "ca.crt")  # sent back to it
        self.keys[party] = key.private_key
        answer = self.flwr_json(
            "supernode", "register", str(key.public_key), CONNECTION, "--name", SITES[party]
        )
        self.node_ids[party] = int(answer["node-id"])

    def start_node(self, party: str) -> subprocess.Popen[bytes]:
        """(Re)start a hospital's SuperNode; each start logs to a file of its own."""
        home = self.tmp / party
        self.starts[party] += 1
        log = home / f"supernode-{self.starts[party]}.log"
        args = ["flower-supernode", "--superlink", f"{HOST}:{GATE_PORT}"]
        args += ["--root-certificates", str(home / "ca.crt")]
        args += ["--auth-supernode-private-key", str(self.keys[party])]
        args += ["--node-config", overrides(self.node_configs[party])]
        self.nodes[party] = self.hosts.popen(party, args, flower_env(home), log)
        self.logs[party] = log
        return self.nodes[party]

    def connected(self, party: str) -> bool:
        return NODE_CONNECTED in self.logs[party].read_text(errors="replace")

    def online(self) -> set[int]:
        answer = self.flwr_json("supernode", "ls", CONNECTION)
        return {int(n["node-id"]) for n in answer["nodes"] if n.get("status") == "online"}

    def wait_online(self, parties, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for party in parties:
            up = lambda p=party: self.connected(p) or self.nodes[p].poll() is not None  # noqa: E731
            wait_for(up, 60, f"{party}'s connection")
            assert self.nodes[party].poll() is None, self.logs[party].read_text()[-2000:]
        wanted = {self.node_ids[p] for p in parties}
        while not wanted <= self.online():
            assert time.monotonic() < deadline, f"{parties} not online after {timeout} s"
            time.sleep(2.0)

    def clientapps(self, party: str) -> list[int]:
        """The ClientApp processes below a hospital's SuperNode."""
        found = []
        for pid, _ in process_tree([self.nodes[party].pid]):
            try:
                if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        return found


def _supervise(
    deployment: Deployment, party: str, out: dict, stop: threading.Event, timeout: float = 240.0
) -> None:
    """Restart a SuperNode as a supervisor would until it stays up; what it took in ``out``."""
    start = time.monotonic()
    out["exits"] = []
    while time.monotonic() - start < timeout and not stop.is_set():
        node = deployment.start_node(party)
        up_since = None
        while node.poll() is None:
            if up_since is None and deployment.connected(party):
                up_since = time.monotonic()
            if up_since is not None and time.monotonic() - up_since >= UP_FOR_S:
                out["seconds"] = up_since - start
                return
            time.sleep(0.25)
        refused = "Exit Code: 305" in deployment.logs[party].read_text(errors="replace")
        out["exits"].append((node.returncode, 305 if refused else None))
        stop.wait(RESTART_EVERY_S)


def _events(catalog_dir: Path, event: str, **match) -> list[dict]:
    return [
        e
        for e in Catalog(catalog_dir).events()
        if e["event"] == event and all(e.get(k) == v for k, v in match.items())
    ]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_sites):
    tmp = tmp_path_factory.mktemp("hosts")
    with netns.Hosts(["coord", *SITES], {HOST: "coord"}) as hosts:
        names = list(hosts.namespaces.values())
        d = Deployment(hosts, tmp, tiny_sites)
        d.start_link()
        for party in SITES:
            d.enrol(party)
            d.start_node(party)
        d.wait_online(list(SITES))
        yield d
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed], listed
    assert not [n for n in names if (netns.NETNS_ETC / n).exists()]


@pytest.fixture(scope="module")
def weathered(deployment):
    """One run: a short cut in round 1; a long cut and a killed node in round 2."""
    d, tmp = deployment, deployment.tmp / "run"
    tmp.mkdir()
    plan = one_task_plan(tmp, rounds=2, steps=2, sites=["hospA", "hospB"], min_sites=2)
    doc = tomllib.loads(plan.read_text())
    doc["training"]["rejoin_grace_s"] = GRACE_S
    plan.write_text(to_toml(doc))
    catalog = tmp / "catalog"
    config = {"plan": str(plan), "catalog": str(catalog), "threads": 1}
    log = tmp / "run.log"
    args = ["flwr", "run", str(d.app), CONNECTION, "--stream", "--run-config", overrides(config)]
    began = time.monotonic()
    run = d.hosts.popen("coord", args, d.env | {"COLUMNS": "500"}, log)
    wait_for(lambda: _events(catalog, "phase-start", phase="base"), 300, "the base phase")
    # round 1: hospB's cable out for a few seconds while it works on the round
    wait_for(lambda: d.clientapps("hospb") or _events(catalog, "round-end"), 120, "hospB busy")
    d.hosts.cut("hospb")
    time.sleep(SHORT_CUT_S)
    d.hosts.restore("hospb")
    # round 2: hospB's cable out until the SuperLink sees it offline; hospA killed
    wait_for(lambda: _events(catalog, "round-end", phase="base", round=1), 300, "round 1")
    cut = time.monotonic()
    d.hosts.cut("hospb")
    d.hosts.stop(d.nodes["hospa"], signal.SIGKILL)
    restart: dict = {}
    stop = threading.Event()
    supervisor = threading.Thread(target=_supervise, args=(d, "hospa", restart, stop))
    supervisor.start()
    try:
        wait_for(lambda: "waiting up to" in log.read_text(errors="replace"), 180, "a short round")
        detected = time.monotonic() - cut
        online_in_cut = d.online()
        d.hosts.restore("hospb")
        restored = time.monotonic()
        retried = None
        while run.poll() is None:
            assert time.monotonic() < restored + 600, "the run did not end within 600 s"
            if retried is None and _events(catalog, "round-retry"):
                retried = time.monotonic() - restored
            time.sleep(0.5)
    finally:
        stop.set()  # a supervisor that outlives the test would start nodes in vain
        supervisor.join()
    ended = time.monotonic()
    output = log.read_text(errors="replace")
    started = re.search(r"Successfully started run (\d+)", output)
    assert started, output[-3000:]
    (status,) = d.flwr_json("ls", CONNECTION, "--run-id", started[1])["runs"]
    timings = {
        "run_s": round(ended - began, 1),
        "offline_detected_s": round(detected, 1),
        "retry_after_restore_s": retried and round(retried, 1),
        "hospA_back_after_kill_s": restart.get("seconds") and round(restart["seconds"], 1),
        "hospA_refused_starts": len(restart.get("exits", [])),
    }
    print(f"\nmulti-host run: {timings}")
    return SimpleNamespace(
        output=output,
        status=status,
        catalog=catalog,
        events=Catalog(catalog).events(),
        hospb_seen_offline=d.node_ids["hospb"] not in online_in_cut,
        restart=restart,
        timings=timings,
    )


def test_a_hospital_gets_no_control_call_through_the_gate(deployment):
    d = deployment
    home = d.tmp / "hospa-cli"
    d.write_connection(home, f"{HOST}:{GATE_PORT}")
    key = write_node_key(home / "keys", "rogue")
    register = ["supernode", "register", str(key.public_key), CONNECTION, "--name", "hospR"]
    for args in (register, ["run", str(d.app), CONNECTION]):
        result = d.flwr(*args, party="hospa", home=home)
        assert result.returncode != 0, (args, result.stdout[-1000:])
    gate_log = (d.home / "gate.log").read_text()
    for call in ("register-node", "start-run"):
        assert f"refused POST /v1/control/{call}" in gate_log, gate_log[-2000:]
    nodes = d.flwr_json("supernode", "ls", CONNECTION)["nodes"]
    assert {int(n["node-id"]) for n in nodes} == set(d.node_ids.values())


def test_a_short_cut_loses_nothing(weathered):
    (first,) = [
        e
        for e in weathered.events
        if e["event"] == "round-end" and e["phase"] == "base" and e["round"] == 1
    ]
    assert sorted(first["sites"]) == ["hospA", "hospB"] and not first["left"], first
    assert not [e for e in weathered.events if e.get("at") == "abdomen/base/1"]


def test_a_cut_past_offline_detection_and_a_killed_node_are_weathered(weathered):
    assert weathered.hospb_seen_offline  # the cut outlasted Flower's offline detection
    events = weathered.events
    retries = [e for e in events if e["event"] == "round-retry"]
    assert retries and retries[0]["at"] == "abdomen/base/2", retries
    assert set(retries[0]["left"]) == {"hospA", "hospB"}, retries
    rejoined = {s for e in events if e["event"] == "sites-rejoined" for s in e["sites"]}
    assert rejoined == {"hospA", "hospB"}, events
    assert weathered.status["status"] == COMPLETED, weathered.output[-3000:]
    (end,) = [e for e in events if e["event"] == "run-end"]
    assert end["summary"]["abdomen"]["status"] == "trained", end
    assert sorted(end["summary"]["abdomen"]["sites"]) == ["hospA", "hospB"]


def test_a_killed_node_restarted_by_a_supervisor_comes_back(weathered):
    restart = weathered.restart
    assert "seconds" in restart, restart
    # refused while the SuperLink holds its earlier session: Flower logs exit code 305
    # (the process itself exits 1)
    assert all(code != 0 and flower == 305 for code, flower in restart["exits"]), restart


def test_an_impostor_is_refused(weathered, deployment):
    node = deployment.node_ids["hospe"]
    line = f"node {node} is registered as 'hospE' but calls itself 'hospB'"
    assert line in weathered.output
