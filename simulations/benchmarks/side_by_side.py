"""``csfl benchmark --jobs N``: methods trained side by side, each in its own process.

One process a method, ``N`` at once, each on its share of the cores (torch threads and
simulated sites): on two cores two one-thread methods get more done than one method on
two threads, whose narrow convolutions and elementwise steps do not scale. Each child is
the same ``csfl benchmark`` command for one method, so its result lands in
``OUT/<method>.json`` exactly as a sequential run writes it, and the parent then writes
the report from the kept results. Nothing but command lines and those files passes
between the processes.

The longest methods start first; ``upper_bound`` leads because it trains the first stage
that ``finetune``, ``lwf`` and ``mib`` start from (:mod:`simulations.benchmarks.shared_stage`
makes a method that arrives while it is being trained wait for it rather than train it
again), and ``no_trim``, which starts from ``continual``'s training phases, waits for
``continual`` to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

STARTS: tuple[str, ...] = (
    "upper_bound",  # trains the shared first stage early
    "continual",
    "joint",
    "federated_joint",
    "lwf",
    "mib",
    "finetune",
    "no_trim",
)
"""The order children start in: the first stage's trainer, then the longest first."""

AFTER: dict[str, str] = {"no_trim": "continual"}
"""A method that starts from another's run (``simulations.benchmarks.shared_training``)
starts once that one has ended (or at once if it is not being run)."""

LOGS = "logs"  # under the benchmark's folder: one log per child
POLL_SECONDS = 2.0


def threads_each(cores: int, jobs: int) -> int:
    """Each child's torch threads and simulated sites' cores: an equal share, one at least."""
    return max(1, cores // jobs)


def pending_methods(methods: Sequence[str], out: Path) -> list[str]:
    """The methods still to train (no ``OUT/<method>.json``), in :data:`STARTS` order.

    ``naive_merge`` is not a run of its own (it comes with ``continual``).
    """
    return [m for m in STARTS if m in methods and not (out / f"{m}.json").is_file()]


def next_ready(queue: Sequence[str], running: Collection[str]) -> str | None:
    """The first queued method whose :data:`AFTER` predecessor is neither queued nor running."""
    for method in queue:
        before = AFTER.get(method)
        if before not in queue and before not in running:
            return method
    return None


def run_side_by_side(
    methods: Sequence[str],
    jobs: int,
    command: Callable[[str], list[str]],
    out: Path,
    env: dict[str, str],
    say: Callable[[str], None] = print,
) -> None:
    """Run ``command(method)`` for each pending method, ``jobs`` at a time.

    Args:
        methods: the methods asked for.
        jobs: how many run at once.
        command: a method's command line (its child writes ``OUT/<method>.json``).
        out: the benchmark folder; each child's output goes to ``OUT/logs/<method>.log``.
        env: the children's environment (their thread limits set).
        say: progress messages.

    Raises:
        RuntimeError: naming every method whose child failed, and its log (the others
            still run to the end and keep their results).
    """
    queue = pending_methods(methods, out)
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, subprocess.Popen[bytes]] = {}
    failed: list[str] = []
    started: dict[str, float] = {}
    try:
        while queue or running:
            while len(running) < jobs and (method := next_ready(queue, running)):
                queue.remove(method)
                log = (logs / f"{method}.log").open("wb")
                # its own session: stopping it stops what it started (Ray, Flower), by group
                running[method] = subprocess.Popen(
                    command(method),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                log.close()  # the child holds its own descriptor
                started[method] = time.perf_counter()
                say(f"{method}: started (pid {running[method].pid}, log {logs / method}.log)")
            time.sleep(POLL_SECONDS)
            for method, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[method]
                seconds = time.perf_counter() - started[method]
                if code == 0:
                    say(f"{method}: done in {seconds:.0f} s")
                else:
                    failed.append(f"{method} (exit {code}, see {logs / method}.log)")
                    say(f"{method}: failed after {seconds:.0f} s, exit code {code}")
    finally:
        for child in running.values():
            _stop(child)
    if failed:
        raise RuntimeError(f"benchmark methods failed: {', '.join(failed)}")


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop a child and everything it started: SIGTERM to its group, SIGKILL if it lingers."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
