"""What every ``csfl`` command shares: bad input becomes one line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Show bad input (a ValueError naming the file or field, or ``extra``) as one line."""
    caught: tuple[type[Exception], ...] = (ValueError, *extra)
    try:
        yield
    except caught as e:  # DataError, BundleError, PlanError, argument mistakes
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
