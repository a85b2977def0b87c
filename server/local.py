"""A Flower federation on 127.0.0.1: one SuperLink, optionally one SuperNode per site.

Used by ``csfl deploy-local`` and the integration tests (real SuperNodes, one per site,
each with its node config) and by ``csfl simulate`` in ``simulations`` (a SuperLink in
simulation mode: Flower's Simulation Engine runs the sites). Every process started here
is stopped on exit, and Flower's home (its ``config.toml`` with the connection) lives in
a folder of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

CONNECTION = "csfl"
APP_DIR = Path(__file__).resolve().parent.parent
"""The Flower app ``flwr run`` starts: the project root, whose pyproject.toml names it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """Environment for every Flower process: our home, no telemetry, no installs, loopback."""
    env = dict(os.environ)
    env |= {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def overrides(config: Mapping[str, object]) -> str:
    """A ``--run-config`` / ``--node-config`` string: ``key=value`` pairs in TOML syntax."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())


def _descendants(roots: Sequence[int]) -> list[tuple[int, int]]:
    """(pid, process group) of ``roots`` and every process below them (POSIX ``ps``)."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True, check=False
    )
    children: dict[int, list[tuple[int, int]]] = {}
    groups: dict[int, int] = {}
    for line in listing.stdout.splitlines():
        pid, ppid, pgid = (int(v) for v in line.split())
        children.setdefault(ppid, []).append((pid, pgid))
        groups[pid] = pgid
    out, todo = [], [r for r in roots if r in groups]
    while todo:
        pid = todo.pop()
        out.append((pid, groups[pid]))
        todo += [child for child, _ in children.get(pid, [])]
    return out


def _alive(pids: Sequence[int]) -> bool:
    """Whether any of these processes still runs (zombies count as gone)."""
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text(encoding="ascii").rsplit(")", 1)[-1].split()[0] == "Z":
                continue
        except OSError:
            pass  # no /proc (macOS): a signal-able process counts as alive
        return True
    return False


class LocalFederation:
    """A context manager that owns a SuperLink (and SuperNodes) and stops them all on exit.

    Args:
        home: Flower's home for these processes (logs, state, connection config).
        simulation: run the SuperLink's Simulation Engine instead of waiting for nodes.
        nodes: for deployment, each SuperNode's node config (e.g. site and data-dir).
    """

    def __init__(
        self, home: Path, simulation: bool, nodes: Sequence[Mapping[str, object]] = ()
    ) -> None:
        self.home = home.resolve()
        self.simulation = simulation
        self.nodes = list(nodes)
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = flower_env(self.home)

    @property
    def address(self) -> str:
        """The SuperLink's address (all its APIs share one port)."""
        return f"127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.home / log_name, "ab")  # noqa: SIM115 (kept open for the child)
        process = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalFederation:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\ninsecure = true\n',
            encoding="utf-8",
        )
        args = [
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.home / "state.db"),
        ]
        link = self._spawn(args + (["--simulation"] if self.simulation else []), "superlink.log")
        self._wait_ready(link)
        for i, node in enumerate(self.nodes):
            self._spawn(
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    overrides(node),
                ],
                f"supernode-{i}.log",
            )
        return self

    def _wait_ready(self, link: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if link.poll() is not None:
                log = self.home / "superlink.log"
                raise RuntimeError(f"flower-superlink exited ({link.returncode}); see {log}")
            try:
                if httpx.get(f"http://{self.address}/health", timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(
            f"flower-superlink not ready after {timeout:.0f} s; see {self.home / 'superlink.log'}"
        )

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, object],
        federation_config: Mapping[str, object] | None = None,
        timeout: float = 3600.0,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP csfl --stream`` with these settings; returns when the run ends."""
        cmd = [
            "flwr",
            "run",
            str(app_dir),
            CONNECTION,
            "--stream",
            "--run-config",
            overrides(run_config),
        ]
        if federation_config:
            cmd += ["--federation-config", overrides(federation_config)]
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this federation started, and their descendants.

        The SuperLink's executor starts the ServerApp and the Simulation Engine (Ray) in
        a process group of its own, so the whole tree is collected first, then each
        group gets SIGTERM and, after ``grace`` seconds, SIGKILL.
        """
        tree = _descendants([p.pid for p in self.processes])
        groups = {pgid for _, pgid in tree}
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pgid in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive([pid for pid, _ in tree]):
                time.sleep(0.1)
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
            if not _alive([pid for pid, _ in tree]):
                break
        self.processes.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
