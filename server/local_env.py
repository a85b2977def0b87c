"""What every local Flower process needs: the app's folder, a free port, Flower's environment.

:class:`server.local.LocalFederation` starts its SuperLink and SuperNodes with these, and
``csfl app-folder`` stages the app with :func:`stage_app`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import sys
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent
"""The project root, whose pyproject.toml names the Flower app (staged by :func:`stage_app`)."""


def stage_app(project: Path, folder: Path) -> Path:
    """Copy the Flower app's own files into ``folder`` (made if needed); returns it.

    ``flwr run`` reads every file under the folder it is given before it filters them
    (Flower 1.42), and the project root holds the virtual environment: about 45,000 files
    and 10 s of CPU a run. The app is ``pyproject.toml``, ``.gitignore`` (Flower's filter)
    and the packages that pyproject.toml gives setuptools.

    Raises:
        RuntimeError: if ``project`` has no pyproject.toml (an install that is not editable).
    """
    if not (project / "pyproject.toml").is_file():
        raise RuntimeError(
            f"{project}: no pyproject.toml; the Flower app runs from the project folder"
            " (install it with `pip install -e`)"
        )
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    packages = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".gitignore"):
        if (project / name).is_file():
            shutil.copy2(project / name, folder / name)
    for child in sorted(project.iterdir()):
        if child.is_dir() and any(fnmatch(child.name, pattern) for pattern in packages):
            shutil.copytree(
                child, folder / child.name, ignore=shutil.ignore_patterns("__pycache__")
            )
    return folder


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel draws outgoing connections' source ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    Drawn below the kernel's ephemeral range: a port the kernel hands out (``bind`` to 0)
    can be taken again, before the Flower process binds it, as the source port of any
    outgoing connection, and with several federations starting at once that happened.
    """
    low = _ephemeral_ports()[0]
    for port in random.sample(range(max(1025, low - 12_000), low), 64):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    with socket.socket() as s:  # all taken: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """Environment for every Flower process: our home, no telemetry, no installs, loopback."""
    env = dict(os.environ)
    env |= {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def toml_value(value: object) -> str:
    """A scalar as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def overrides(config: Mapping[str, object]) -> str:
    """A ``--run-config`` / ``--node-config`` string: ``key=value`` pairs in TOML syntax."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())
