"""Hosts of their own for the multi-host tests: Linux network namespaces (root, iproute2).

:class:`Hosts` makes one namespace per party (names with a random suffix), a bridge in the
first one (the hub: the coordinator, :data:`HUB_ADDRESS`) and one veth pair per other
namespace, whose end in the hub's namespace is that host's link (:meth:`Hosts.cut`,
:meth:`Hosts.restore`: the cable pulled at the coordinator's switch port). Every namespace
has ``lo`` up and an ``/etc/netns/NAME/hosts`` file mapping host names to addresses
(``ip netns exec`` bind-mounts it over ``/etc/hosts`` for what it starts). On exit, even
after a failure, every process started in them (and everything below those, and whatever
still runs in a namespace) is killed by PID, and the namespaces and their ``/etc/netns``
folders are removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from server.processes import process_groups, process_tree

NETNS_ETC = Path("/etc/netns")
SUBNET = "10.213.0"
"""The hosts' private /24: the hub is .1, the others .2, .3, ... in order."""
HUB_ADDRESS = f"{SUBNET}.1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (not root, no ``ip``, refused), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"csfl-probe-{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"`ip netns add` failed: {error}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """A context manager owning namespaces ``hub, *others``, their links and processes.

    Args:
        parties: short names (a-z, digits): the hub first, e.g. ``["coord", "hospa"]``.
        names: host names every namespace resolves, each to a party's address.
    """

    def __init__(self, parties: Sequence[str], names: Mapping[str, str] | None = None) -> None:
        suffix = secrets.token_hex(3)
        self.namespaces = {party: f"csfl-{party}-{suffix}" for party in parties}
        self.address = {party: f"{SUBNET}.{i + 1}" for i, party in enumerate(parties)}
        self.hub = parties[0]
        self.links = {party: f"to-{party}"[:15] for party in parties[1:]}
        """Each other party's link: its veth's end in the hub's namespace."""
        self.names = dict(names or {})
        self.processes: list[subprocess.Popen[bytes]] = []
        self.made: list[str] = []
        self.made_etc = False

    def __enter__(self) -> Hosts:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{self.address[party]} {name}\n" for name, party in self.names.items()
        )
        self.made_etc = not NETNS_ETC.exists()
        for ns in self.namespaces.values():
            _ip("netns", "add", ns)
            self.made.append(ns)
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text(hosts)
            _ip("-n", ns, "link", "set", "lo", "up")
        hub = self.namespaces[self.hub]
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{self.address[self.hub]}/24", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for party, link in self.links.items():
            ns = self.namespaces[party]
            peer = ["peer", "name", "eth0", "netns", ns]
            _ip("link", "add", link, "netns", hub, "type", "veth", *peer)
            _ip("-n", hub, "link", "set", link, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address[party]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, party: str) -> None:
        """Pull a party's cable: its link's end at the hub goes down (packets are lost)."""
        _ip("-n", self.namespaces[self.hub], "link", "set", self.links[party], "down")

    def restore(self, party: str) -> None:
        """Plug a party's cable back in."""
        _ip("-n", self.namespaces[self.hub], "link", "set", self.links[party], "up")

    def command(self, party: str, args: Sequence[str]) -> list[str]:
        """``args`` as run inside a party's namespace (with its ``/etc/hosts``)."""
        return ["ip", "netns", "exec", self.namespaces[party], *args]

    def popen(
        self,
        party: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Path,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in a party's namespace, in a session of its own, output to ``log``.

        ``ip netns exec`` execs the command, so the process's PID is the command's.
        """
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self.command(party, args),
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self,
        party: str,
        args: Sequence[str],
        env: Mapping[str, str],
        timeout: float = 120.0,
        stdout: IO[bytes] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in a party's namespace to its end; output captured as text.

        Raises:
            subprocess.TimeoutExpired: after ``timeout`` (the command is killed).
        """
        process = subprocess.Popen(
            self.command(party, args),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.processes.append(process)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill([process.pid], grace=0.0)
            raise
        return subprocess.CompletedProcess(
            process.args, process.returncode, out.decode(errors="replace"), err.decode()
        )

    def pids(self) -> list[int]:
        """Every process that runs in one of the namespaces now (``ip netns pids``)."""
        found = []
        for ns in self.made:
            listed = _ip("netns", "pids", ns, check=False).stdout.split()
            found += [int(pid) for pid in listed if pid.isdigit()]
        return found

    def _kill(self, roots: Sequence[int], grace: float) -> None:
        """SIGTERM (then, after ``grace`` s, SIGKILL) the groups of ``roots`` and below."""
        tree = process_tree(roots)
        pids = [pid for pid, _ in tree]
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if signum == signal.SIGTERM and grace <= 0:
                continue
            for pgid in process_groups(tree):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signum)
            for pid in pids:  # a process that left its group (e.g. a new session)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_running(pid) for pid in pids):
                time.sleep(0.1)
        for process in self.processes:
            if process.pid in pids:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1.0)

    def stop(self, process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to a process started here and to everything in its group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def close(self, grace: float = 5.0) -> None:
        """Kill every process (ours and whatever runs in a namespace), remove the namespaces."""
        self._kill([p.pid for p in self.processes] + self.pids(), grace)
        for ns in self.made:
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        if self.made_etc:
            with contextlib.suppress(OSError):  # unless someone else keeps files there now
                NETNS_ETC.rmdir()
        self.made.clear()
        self.processes.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _running(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
