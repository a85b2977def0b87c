"""What every ``csfl`` command shares: bad input becomes one line and exit code 2.

It lives in ``core`` so that the hospital's commands (``client.cli``), the coordinator's
(``server.cli``) and the simulations' can all use it without importing one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

USAGE_ERROR = 2
"""The exit code of a command given bad input (a file, a field or an argument)."""


def fail(message: str) -> NoReturn:
    """End the command with ``error: MESSAGE`` on stderr and exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Show bad input (a ValueError naming the file or field, or ``extra``) as one line."""
    caught: tuple[type[Exception], ...] = (ValueError, *extra)
    try:
        yield
    except caught as e:  # DataError, BundleError, PlanError, argument mistakes
        fail(str(e))
