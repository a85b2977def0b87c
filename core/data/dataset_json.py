"""Reading a ``dataset.json`` (nnU-Net v2 or MSD) with errors that name the file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.data.problems import DataError


def load_dataset_json(path: Path, required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Parse ``dataset.json`` and check that each required key is there with the right type.

    Args:
        path: the ``dataset.json`` file.
        required: key -> expected JSON type(s), e.g. ``{"labels": dict}``.

    Raises:
        DataError: if the file is missing, is not JSON, is not an object, or lacks a key.
    """
    if not path.is_file():
        raise DataError(path, "dataset.json is missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, found {type(obj).__name__}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise DataError(path, f"missing required key(s): {', '.join(missing)}")
    for key, kind in required.items():
        if not isinstance(obj[key], kind):
            names = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(_json_name(k) for k in names)
            raise DataError(path, f"{key}: expected {expected}, found {_json_name(type(obj[key]))}")
    return obj


def _json_name(kind: type) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(
        kind, kind.__name__
    )


def single_ct_channel(path: Path, key: str, channels: dict[str, Any]) -> str | None:
    """Check a channel table (``channel_names`` / ``modality``) holds one channel.

    Returns:
        A warning if that channel is not named CT, else ``None``.

    Raises:
        DataError: if there is not exactly one channel, numbered 0.
    """
    if list(channels) != ["0"]:
        raise DataError(
            path, f'{key}: expected exactly one channel "0" (CT), found {sorted(channels)}'
        )
    name = str(channels["0"])
    if name.strip().lower() != "ct":
        return f"{key}: channel 0 is {name!r}; this system is built for CT in Hounsfield units"
    return None
