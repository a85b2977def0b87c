"""The processes a local federation leaves behind: its trees, process groups and orphans.

Flower's SuperLink starts its executor, the ServerApp and the Simulation Engine in process
groups of their own, and a SuperExec can outlive its SuperNode; these helpers find them
all (POSIX ``ps``, Linux ``/proc``) so that :class:`server.local.LocalFederation` and the
tests stop every one by its PID.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def process_tree(roots: Sequence[int]) -> list[tuple[int, int]]:
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


def process_groups(tree: Sequence[tuple[int, int]]) -> set[int]:
    """The process groups of a :func:`process_tree`, never the caller's own."""
    return {pgid for _, pgid in tree} - {os.getpgrp()}


def lineage() -> set[int]:
    """The calling process and its ancestors (Linux ``/proc``)."""
    found, pid = set(), os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])  # the field after the state
    return found


def home_processes(under: Path) -> list[int]:
    """Processes whose Flower home (``FLWR_HOME``) lies under a folder, orphans included.

    Every process a :class:`server.local.LocalFederation` starts, and everything they
    start, inherits its home; a SuperExec whose SuperNode died leaves the process tree but
    not its environment. Linux ``/proc``; elsewhere none are found. This process and its
    ancestors never count, whatever home they were given (a shell with ``FLWR_HOME`` set).
    """
    prefix = f"FLWR_HOME={under}".encode()
    found = []
    ours = lineage()
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) in ours:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(v == prefix or v.startswith(prefix + b"/") for v in environ):
            found.append(int(entry.name))
    return found


def alive(pids: Sequence[int]) -> bool:
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
