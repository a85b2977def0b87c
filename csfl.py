"""The ``csfl`` command line: where every role's commands are put together.

Each command lives with its users: a hospital's (``site check``, ``predict``) in
``client.cli``, the coordinator's (``plan check``, ``catalog``, ``deploy-local``,
``fleet-gate``) in ``server.cli``, the simulation runner's (``phantoms``, ``simulate``)
in ``simulations.cli`` and the benchmarks' in ``simulations.benchmarks.cli``. This module
belongs to none of them and sits above them all, so it alone may gather them. Every
command imports its heavy packages inside itself, so that ``csfl --help`` answers at once.
"""

from __future__ import annotations

import typer

from client import cli as client_cli
from server import cli as server_cli
from simulations import cli as simulation_cli
from simulations.benchmarks import cli as benchmark_cli

app = typer.Typer(
    help="continual-segment-fl: federated continual segmentation of whole-body CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for role in (client_cli, server_cli, simulation_cli, benchmark_cli):
    role.add_commands(app)

if __name__ == "__main__":
    app()
