"""The local federation's helpers: the staged app folder, and the processes of a Flower home."""

import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from server.local_env import APP_DIR, stage_app
from server.processes import home_processes


def test_the_staged_app_is_the_fab_of_the_project_without_its_environment(tmp_path):
    staged = stage_app(APP_DIR, tmp_path / "app")
    assert {p.name for p in staged.iterdir()} >= {"pyproject.toml", "core", "server", "client"}
    assert not (staged / "tests").exists() and not (staged / ".venv").exists()
    assert not list(staged.rglob("__pycache__"))
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(staged))) as fab:
        names = set(fab.namelist())
    assert {"server/app.py", "client/app.py", "pyproject.toml"} <= names
    assert not any(name.startswith(("tests/", ".venv/")) for name in names)


def test_an_install_without_its_project_folder_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"no pyproject\.toml"):
        stage_app(tmp_path, tmp_path / "app")


def test_a_home_s_processes_include_orphans_and_never_the_caller(tmp_path):
    home = tmp_path / "flower"
    env = {**os.environ, "FLWR_HOME": str(home)}
    # a SuperExec whose SuperNode died: a process of the home that left the process tree
    spawned = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], env=env, capture_output=True
    )
    orphan = int(spawned.stdout)
    try:
        assert orphan in home_processes(home) and orphan in home_processes(tmp_path)
        assert orphan not in home_processes(tmp_path / "other")
        # a caller that carries the home itself (a shell with FLWR_HOME set) is not listed
        code = (
            "import json, os, pathlib, server.processes as p; "
            f"print(json.dumps([os.getpid(), p.home_processes(pathlib.Path({str(home)!r}))]))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        caller, found = json.loads(out.stdout)
        assert orphan in found and caller not in found
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_free_port_lies_below_the_kernel_s_ephemeral_range_and_is_free():
    import socket

    from server.local_env import _ephemeral_ports, free_port

    low, _ = _ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert all(1024 < p < low for p in ports) and len(ports) > 1  # drawn at random
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # nobody holds it
