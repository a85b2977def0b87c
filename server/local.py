"""A Flower federation on 127.0.0.1: one SuperLink, optionally one SuperNode per site.

Used by ``csfl deploy-local`` and the integration tests (real SuperNodes, one per site,
each with its node config, optionally with TLS and SuperNode authentication) and by
``csfl simulate`` in ``simulations`` (a SuperLink in simulation mode: Flower's Simulation
Engine runs the sites). Every process started here is stopped on exit, and Flower's home
(its ``config.toml`` with the connection, its state, certificates and keys) lives in a
folder of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from core.io import atomic_write_bytes
from server.credentials import ServerCredentials, write_node_key, write_server_credentials
from server.local_env import flower_env, free_port, overrides, stage_app, toml_value
from server.processes import alive, home_processes, process_groups, process_tree

CONNECTION = "csfl"
WATCH_SECONDS = 2.0  # how often a long flwr command's watcher is called
STATUS_TRIES = 3  # times a finished run's status is asked for before giving up
NODE_CONNECTED = "SuperNode ID:"
"""What a SuperNode logs once the SuperLink has accepted it (Flower 1.42)."""
COMPLETED = "finished:completed"
"""A run's status in ``flwr ls`` once its ServerApp returned without an error."""


@dataclass
class LocalNode:
    """A SuperNode started by a :class:`LocalFederation`."""

    config: Mapping[str, object]
    process: subprocess.Popen[bytes]
    log: Path
    node_id: int | None = None
    """The id its key was registered under (with TLS), else None."""

    def connected(self) -> bool:
        """Whether its log says that the SuperLink gave it an id (it may still be refused)."""
        try:
            return NODE_CONNECTED in self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def children(self) -> list[int]:
        """The processes it started (a ClientApp per message it works on)."""
        return [pid for pid, _ in process_tree([self.process.pid]) if pid != self.process.pid]


class LocalFederation:
    """A context manager that owns a SuperLink (and SuperNodes) and stops them all on exit.

    With ``tls``, the whole recipe of a real deployment on loopback: a CA and a SuperLink
    certificate (:mod:`server.credentials`), SuperNode authentication, one key per site
    registered under the site's name, and every SuperNode trusting the CA. On entry the
    SuperNodes of ``nodes`` are started and waited for until they are online.

    Args:
        home: Flower's home for these processes (logs, state, keys, connection config).
        simulation: run the SuperLink's Simulation Engine instead of waiting for nodes.
        nodes: for deployment, each SuperNode's node config (e.g. site and data-dir).
        tls: TLS and SuperNode authentication instead of ``--insecure``.
        gate: SuperNodes connect through a fleet gate (:mod:`server.gate`) on a port of its
            own, as hospitals do, and never to the SuperLink's port.
    """

    def __init__(
        self,
        home: Path,
        simulation: bool,
        nodes: Sequence[Mapping[str, object]] = (),
        tls: bool = False,
        gate: bool = False,
    ) -> None:
        self.home = home.resolve()
        self.simulation = simulation
        self.node_configs = list(nodes)
        self.tls = tls
        self.port = free_port()
        self.gate_port = free_port() if gate else None
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nodes: list[LocalNode] = []
        self.credentials: ServerCredentials | None = None
        self.env = flower_env(self.home)

    @property
    def address(self) -> str:
        """The SuperLink's address (all its APIs share one port)."""
        return f"127.0.0.1:{self.port}"

    @property
    def node_address(self) -> str:
        """Where SuperNodes connect: the fleet gate's address if there is one."""
        return f"127.0.0.1:{self.gate_port or self.port}"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.home / log_name, "ab")  # noqa: SIM115 (kept open for the child)
        process = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def _tls_files(self) -> list[str]:
        """The CA, certificate and key flags that the SuperLink and the gate share."""
        if self.credentials is None:
            return []
        c = self.credentials
        return [
            "--ssl-ca-certfile",
            str(c.ca_certificate),
            "--ssl-certfile",
            str(c.certificate),
            "--ssl-keyfile",
            str(c.private_key),
        ]

    def _security(self) -> list[str]:
        """The SuperLink's transport flags."""
        if self.credentials is None:
            return ["--insecure"]
        return [*self._tls_files(), "--enable-supernode-auth"]

    def __enter__(self) -> LocalFederation:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.credentials = write_server_credentials(self.home / "tls")
        security = (
            f"root-certificates = {toml_value(str(self.credentials.ca_certificate))}\n"
            if self.credentials
            else "insecure = true\n"
        )
        atomic_write_bytes(
            self.home / "config.toml",
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\n{security}'.encode(),
        )
        args = [
            "flower-superlink",
            *self._security(),
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # Flower's Python state, not SQLite: a local federation's runs end with it, and
            # SQLAlchemy doubled the SuperLink's CPU time (38 -> 19 s in the TLS test)
            "--database",
            ":flwr-in-memory:",
        ]
        try:
            link = self._spawn(
                args + (["--simulation"] if self.simulation else []), "superlink.log"
            )
            self._wait_ready(link, self.address, "flower-superlink")
            if self.gate_port is not None:
                self._wait_ready(self._start_gate(), self.node_address, "csfl fleet-gate")
            self.wait_online([self.add_node(config) for config in self.node_configs])
        except BaseException:
            self.stop()
            raise
        return self

    def _start_gate(self) -> subprocess.Popen[bytes]:
        args = ["csfl", "fleet-gate", "--listen", self.node_address, "--superlink", self.address]
        return self._spawn([*args, *self._tls_files()], "gate.log")

    def _wait_ready(
        self, link: subprocess.Popen[bytes], address: str, what: str, timeout: float = 60.0
    ) -> None:
        scheme = "http"
        verify: ssl.SSLContext | bool = True
        if self.credentials is not None:
            scheme = "https"
            verify = ssl.create_default_context(cafile=self.credentials.ca_certificate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if link.poll() is not None:
                raise RuntimeError(f"{what} exited ({link.returncode}); see {self.home}")
            try:
                url = f"{scheme}://{address}/health"
                if httpx.get(url, timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {self.home}")

    def flwr(
        self, *args: str, timeout: float = 60.0, watch: Callable[[], None] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The ``flwr`` CLI against this federation's home (output captured).

        ``watch`` is called every couple of seconds while the command runs (to show
        progress from elsewhere, e.g. the catalog's journal).

        Raises:
            subprocess.TimeoutExpired: if the command outlives ``timeout`` (it is killed).
        """
        env = self.env | {"COLUMNS": "500"}  # JSON on one line per value, never wrapped
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(["flwr", *args], env=env, stdout=out, stderr=err)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    process.wait(timeout=WATCH_SECONDS if watch else timeout)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        process.kill()
                        process.wait()
                        raise
                if watch:
                    watch()
            if watch:
                watch()
            out.seek(0)
            err.seek(0)
            text = [f.read().decode(errors="replace") for f in (out, err)]
        return subprocess.CompletedProcess(["flwr", *args], process.returncode, *text)

    def _flwr_json(self, *args: str) -> dict[str, Any]:
        """A ``flwr ... --format json`` answer; raises naming the command if it failed."""
        result = self.flwr(*args, "--format", "json")
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError:
            answer = {}
        if result.returncode != 0 or not isinstance(answer, dict) or not answer.get("success"):
            command = " ".join(["flwr", *args])
            raise RuntimeError(f"{command}: {result.stdout[-500:]} {result.stderr[-500:]}")
        return answer

    def register(self, public_key: Path, name: str) -> int:
        """``flwr supernode register KEY.pub csfl --name NAME``; returns the node's id."""
        answer = self._flwr_json(
            "supernode", "register", str(public_key), CONNECTION, "--name", name
        )
        return int(answer["node-id"])

    def online_nodes(self) -> set[int]:
        """The ids of the nodes the SuperLink sees online now."""
        answer = self._flwr_json("supernode", "ls", CONNECTION)
        return {int(n["node-id"]) for n in answer["nodes"] if n.get("status") == "online"}

    def add_node(
        self,
        config: Mapping[str, object],
        register_as: str | None = "",
        extra_args: Sequence[str] = (),
    ) -> LocalNode:
        """Start a SuperNode with ``config`` as its node config.

        With TLS it gets a fresh key, registered under ``register_as`` (by default its
        ``site``; None: not registered, so the SuperLink refuses it).
        """
        index = len(self.nodes)
        args = [
            "flower-supernode",
            "--superlink",
            self.node_address,
            "--host",
            "127.0.0.1",
            "--port",  # each SuperNode on a host needs a port of its own
            str(free_port()),
            "--node-config",
            overrides(config),
            *extra_args,
        ]
        node_id = None
        if self.credentials is None:
            args.append("--insecure")
        else:
            key = write_node_key(self.home / "keys", f"node-{index}")
            if register_as is not None:
                node_id = self.register(key.public_key, register_as or str(config["site"]))
            args += [
                "--root-certificates",
                str(self.credentials.ca_certificate),
                "--auth-supernode-private-key",
                str(key.private_key),
            ]
        log = f"supernode-{index}.log"
        node = LocalNode(config, self._spawn(args, log), self.home / log, node_id)
        self.nodes.append(node)
        return node

    def wait_online(self, nodes: Sequence[LocalNode], timeout: float = 90.0) -> None:
        """Wait until ``nodes`` are online (a run started earlier would not see them).

        Raises:
            RuntimeError: a node exited, or they are not all online within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while nodes:
            for node in nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(
                        f"flower-supernode exited ({node.process.returncode}); see {node.log}"
                    )
            if not all(node.connected() for node in nodes) and time.monotonic() < deadline:
                time.sleep(0.2)  # each `flwr supernode ls` below is a process and 2 s of CPU
                continue
            online = self.online_nodes()
            if self.credentials is None:  # unauthenticated nodes get their ids on arrival
                ready = len(online) >= len(nodes)
            else:
                ready = online >= {n.node_id for n in nodes}
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(online)} of {len(nodes)} SuperNode(s) online after {timeout:.0f} s;"
                    f" see {self.home}"
                )
            time.sleep(2.0)  # each check is a `flwr` CLI process

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, object],
        federation_config: Mapping[str, object] | None = None,
        timeout: float = 3600.0,
        watch: Callable[[], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP csfl --stream`` with these settings; returns when the run ends.

        The app's files are staged first (:func:`stage_app`), so that Flower does not
        read the whole project folder.

        ``watch`` is called every couple of seconds while it runs (see :meth:`flwr`).

        ``flwr run`` exits 0 even when the ServerApp fails, so the run's final status is
        asked for: a run that did not complete gets return code 1 and its status on stderr.
        """
        with tempfile.TemporaryDirectory(prefix="app-", dir=self.home) as staged:
            app = stage_app(app_dir, Path(staged))
            cmd = ["run", str(app), CONNECTION, "--stream", "--run-config", overrides(run_config)]
            if federation_config:
                cmd += ["--federation-config", overrides(federation_config)]
            result = self.flwr(*cmd, timeout=timeout, watch=watch)
        started = re.search(r"Successfully started run (\d+)", result.stdout)
        if result.returncode != 0 or started is None:
            return result
        for attempt in range(1, STATUS_TRIES + 1):  # a loaded machine can be slow to say
            try:
                (run,) = self._flwr_json("ls", CONNECTION, "--run-id", started[1])["runs"]
                break
            except subprocess.TimeoutExpired:
                if attempt == STATUS_TRIES:
                    raise
        if run["status"] != COMPLETED:
            result.returncode = 1
            result.stderr += f"\nrun {started[1]}: {run['status']} {run['status-details']}\n"
        return result

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this federation started, and their descendants.

        The SuperLink's executor starts the ServerApp and the Simulation Engine (Ray) in
        a process group of its own, so the whole tree is collected first (with the
        orphans that carry this home: :func:`home_processes`), then each group gets
        SIGTERM (and SIGCONT, for a stopped one) and, after ``grace`` seconds, SIGKILL.
        """
        tree = process_tree([p.pid for p in self.processes] + home_processes(self.home))
        groups = process_groups(tree)
        for signals, wait in (((signal.SIGTERM, signal.SIGCONT), grace), ((signal.SIGKILL,), 5.0)):
            for pgid in groups:
                for signum in signals:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive([pid for pid, _ in tree]):
                time.sleep(0.1)
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
            if not alive([pid for pid, _ in tree]):
                break
        self.processes.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
