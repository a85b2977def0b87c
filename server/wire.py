"""What crosses the wire, one JSON line per message, for a hospital's audit.

The coordinator can keep a log of every message it sends and receives (run config
``wire-log``; ``csfl simulate`` keeps ``OUT/wire.jsonl``): its direction, type, site and
content, with every array as its name, dtype and shape (never its values) and every
metric and config entry whole, since those are the bounded scalars the protocol allows.
A hospital's IT can read there exactly what its site sent.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

SENT, RECEIVED = "to site", "from site"


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    return value


def summarise(content: RecordDict) -> dict[str, Any]:
    """A message's content as it may be audited: arrays by dtype and shape, scalars whole."""
    out: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {
                "arrays": {k: {"dtype": a.dtype, "shape": list(a.shape)} for k, a in record.items()}
            }
        elif isinstance(record, MetricRecord):
            out[name] = {"metrics": {k: _scalar(v) for k, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            out[name] = {"config": {k: _scalar(v) for k, v in record.items()}}
    return out


class WireLog:
    """Appends one line per message to a file (thread-safe; a line is written whole)."""

    def __init__(self, path: str | Path | None) -> None:
        """Log to ``path`` (its folder is made; an existing log is appended to); None: off."""
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(
        self,
        direction: str,
        message_type: str,
        site: str,
        content: RecordDict | None,
        error: str | None = None,
    ) -> None:
        """Log one message (``content`` None: a reply that carried an error instead)."""
        if self.path is None:
            return
        line: dict[str, Any] = {"direction": direction, "type": message_type, "site": site}
        if content is not None:
            line["content"] = summarise(content)
        if error is not None:
            line["error"] = error
        text = json.dumps(line, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(text)


def read_wire_log(path: str | Path) -> list[dict[str, Any]]:
    """Every message a wire log holds, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
