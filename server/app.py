"""The Flower ServerApp: read the plan, find the sites, run the unfinished tasks.

Run config (absolute paths: the ServerApp runs in the SuperLink's working directory):
``plan`` (the task plan TOML) and ``catalog`` (the catalog folder); optional
``round-timeout`` in seconds (0: each round's own, derived from its steps, see
``server.steps.round_timeout``) and ``wire-log`` (an absolute path: every message sent and
received, summarised, :mod:`server.wire`; empty: none).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.catalog import Catalog
from server.federation import Federation
from server.orchestrator import Orchestrator
from server.plan import load_plan
from server.wire import WireLog

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Orchestrate the plan's tasks over the connected sites."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = context.run_config
    for key in ("plan", "catalog"):
        if key not in config or not Path(str(config[key])).is_absolute():
            raise ValueError(
                f"run config {key!r} must be an absolute path (got {config.get(key)!r})"
            )
    plan = load_plan(str(config["plan"]))
    catalog = Catalog(str(config["catalog"]))
    timeout = float(config.get("round-timeout", 0)) or None
    wire_log = str(config.get("wire-log", ""))
    if wire_log and not Path(wire_log).is_absolute():
        raise ValueError(f"run config 'wire-log' must be an absolute path (got {wire_log!r})")
    wire = WireLog(wire_log) if wire_log else None
    finished = Orchestrator(plan, catalog, Federation(grid, timeout, wire)).run()
    logging.getLogger(__name__).info("finished tasks in this run: %s", finished)
