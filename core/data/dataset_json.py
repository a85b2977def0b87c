"""Reading a ``dataset.json`` (nnU-Net v2 or MSD) with errors that name the file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.data.problems import DataError
from core.io import resolve_inside

MAX_JSON_BYTES = 64 * 2**20  # far above any real dataset.json; bounds what is parsed


def read_json_file(path: Path) -> Any:
    """Parse a small JSON file, refusing one too large or too deep to be a dataset description.

    Raises:
        DataError: if the file is missing, larger than :data:`MAX_JSON_BYTES`, or not JSON.
    """
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DataError(
                path, f"{size:,} bytes; expected a JSON file of at most {MAX_JSON_BYTES:,}"
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(path, "not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror})") from None


def load_dataset_json(path: Path, required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Parse ``dataset.json`` and check that each required key is there with the right type.

    Args:
        path: the ``dataset.json`` file.
        required: key -> expected JSON type(s), e.g. ``{"labels": dict}``.

    Raises:
        DataError: if the file is missing, too large, is not JSON, is not an object, or
            lacks a key.
    """
    if not path.is_file():
        raise DataError(path, "dataset.json is missing")
    obj = read_json_file(path)
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


def path_inside(root: Path, value: str, source: Path, field: str) -> Path:
    """A path named in a layout file, under ``root``; it may not leave ``root``.

    An absolute path, ``..`` that climbs out, or a symbolic link that points outside the
    dataset folder is refused: a description file only names files of its own dataset.

    Raises:
        DataError: naming ``source`` and ``field``.
    """
    try:
        return resolve_inside(root, value)
    except ValueError as e:
        raise DataError(
            source, f"{field}: {e}; expected a path inside the dataset folder"
        ) from None


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
