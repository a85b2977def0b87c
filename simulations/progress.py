"""What a newcomer sees while a stage runs: each round and phase as the server journals it.

The server appends events to the catalog's ``journal.jsonl`` (``phase-start``,
``round-end``, ``phase-end``); :class:`JournalWatcher` reads what is new every few
seconds and prints one line per event, with the time elapsed and an estimate of the time
left (rounds still to come x the mean seconds of a round so far). Flower's own log goes
to the stage's log file, not to the console.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


class JournalWatcher:
    """Prints the journal's new events; call it repeatedly while the server runs.

    Args:
        journal: the catalog's ``journal.jsonl`` (it may not exist yet).
        planned_rounds: how many rounds this stage has in all (for the estimate).
        say: where lines go.
    """

    def __init__(self, journal: Path, planned_rounds: int, say: Callable[[str], None]) -> None:
        self.journal = journal
        self.planned = planned_rounds
        self.say = say
        self.offset = journal.stat().st_size if journal.is_file() else 0
        self.start = time.monotonic()
        self.rounds = 0

    def __call__(self) -> None:
        """Print every complete event written since the last call."""
        if not self.journal.is_file():
            return
        with self.journal.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = self.describe(event)
            if text:
                self.say(text)

    def describe(self, event: dict[str, Any]) -> str | None:
        """One line for an event (``None``: not worth a line)."""
        where = f"  {event.get('task')}/{event.get('phase')}"
        elapsed = time.monotonic() - self.start
        kind = event.get("event")
        if kind == "phase-start":
            return f"{where}: started at {', '.join(event.get('sites', []))}"
        if kind == "round-end":
            self.rounds += 1
            left = max(0, self.planned - self.rounds) * elapsed / self.rounds
            loss = event.get("loss")
            rejected = event.get("rejected") or []
            return (
                f"{where} round {event.get('round')}/{event.get('rounds')}: "
                f"{len(event.get('sites', []))} site(s) replied"
                + (f", rejected {', '.join(rejected)}" if rejected else "")
                + (f", loss {loss:.3f}" if isinstance(loss, int | float) else "")
                + f" [{_minutes(elapsed)} elapsed, ~{_minutes(left)} left]"
            )
        if kind == "phase-end" and event.get("phase") == "evaluate":
            dice = [v for v in event.get("metrics", {}).get("dice", {}).values() if v is not None]
            mean = f"{sum(dice) / len(dice):.3f}" if dice else "-"
            return f"{where}: validation mean Dice {mean} [{_minutes(elapsed)} elapsed]"
        if kind == "phase-end":
            return f"{where}: done in {_minutes(float(event.get('seconds', 0)))}"
        return None
