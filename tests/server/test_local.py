"""The app folder that ``flwr run`` is given holds the app and nothing else."""

import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from server.local import APP_DIR, stage_app


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
