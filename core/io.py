"""Atomic file writes: a crash leaves either the old file or the new one, never half of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    Args:
        path: destination; its folder is created if missing.
        data: the whole content.

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-ordered JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, provided it stays inside ``root`` once links are followed.

    Raises:
        ValueError: for an empty or absolute path, a NUL byte, ``..`` that climbs out of
            ``root``, or a symbolic link that points outside it.
    """
    if not relative or "\0" in relative or Path(relative).is_absolute():
        raise ValueError(f"{relative!r} is not a relative path")
    try:
        inside = (root / relative).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop, an over-long name
        inside = False
    if not inside:
        raise ValueError(f"{relative!r} leads outside {root}")
    return root / relative
