import json
import os

import pytest

from core.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_creates_folders_and_leaves_no_temp_file(tmp_path):
    dest = atomic_write_bytes(tmp_path / "a" / "b.bin", b"hello")
    assert dest.read_bytes() == b"hello"
    assert os.listdir(dest.parent) == ["b.bin"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    dest = atomic_write_json(tmp_path / "x.json", {"v": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(dest, {"v": 2})
    assert json.loads(dest.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.json"]
