"""Property tests: any ``dataset.json`` (nnU-Net v2 or MSD) gives a dataset or a DataError."""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import DataError, TaskDataset, open_dataset
from tests.builders import msd_dataset, nnunet_dataset

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["../x.nii.gz", "/etc/passwd", "./imagesTr/x_0.nii.gz", "liver", "CT"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a JSON value."""
    yield prefix
    children = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in children:
        yield from _paths(value, (*prefix, key))


def _mutated(meta: dict[str, Any], edits: list[tuple[int, Any, bool]]) -> Any:
    meta = json.loads(json.dumps(meta))
    for pick, value, delete in edits:
        paths = [p for p in _paths(meta) if p]
        if not paths:
            break
        *parents, last = paths[pick % len(paths)]
        node = meta
        for key in parents:
            node = node[key]
        if delete and isinstance(node, dict):
            del node[last]
        else:
            node[last] = value
    return meta


def _check(root: Path, meta: Any) -> None:
    (root / "dataset.json").write_text(json.dumps(meta))  # NaN and Infinity included
    try:
        ds = open_dataset(root)
    except DataError as e:
        assert str(e).startswith(f"{e.path}: ")
        return
    assert isinstance(ds, TaskDataset) and ds.cases and ds.labels.labels
    inside = root.resolve()
    for case in ds.cases:
        assert all(f.resolve().is_relative_to(inside) for f in case.files)
    assert all(1 <= i <= 2**31 - 1 for i in ds.labels.ids)


@pytest.fixture(scope="module")
def layouts() -> Iterator[dict[str, tuple[Path, dict[str, Any]]]]:
    with tempfile.TemporaryDirectory() as folder:
        nnunet = nnunet_dataset(Path(folder) / "Dataset001_A", n_cases=2).root
        msd = msd_dataset(Path(folder) / "Task09_Spleen", {"0": "background", "1": "spleen"})
        yield {
            name: (root, json.loads((root / "dataset.json").read_text()))
            for name, root in (("nnunet", nnunet), ("msd", msd))
        }


EDITS = st.lists(st.tuples(st.integers(0, 10**6), JSON, st.booleans()), min_size=1, max_size=3)


@FUZZ
@given(edits=EDITS)
def test_mutated_nnunet_dataset_json(layouts, edits):
    root, meta = layouts["nnunet"]
    _check(root, _mutated(meta, edits))


@FUZZ
@given(edits=EDITS)
def test_mutated_msd_dataset_json(layouts, edits):
    root, meta = layouts["msd"]
    _check(root, _mutated(meta, edits))


@FUZZ
@given(meta=JSON)
def test_any_json_as_dataset_json(layouts, meta):
    root, _ = layouts["msd"]
    _check(root, meta)


@settings(max_examples=60, deadline=None)
@given(
    image=st.one_of(
        st.text(alphabet="./imagesTrx_0nilgz", max_size=40),
        st.sampled_from(["/", "..", "imagesTr/../../Task09_Spleen/imagesTr/x_0.nii.gz"]),
    )
)
def test_msd_case_paths_stay_inside_the_folder(layouts, image):
    root, meta = layouts["msd"]
    changed = json.loads(json.dumps(meta))
    changed["training"][0]["image"] = image
    _check(root, changed)


def test_a_deeply_nested_dataset_json_is_refused(tmp_path):
    root = nnunet_dataset(tmp_path / "Dataset001_A", n_cases=1).root
    (root / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        open_dataset(root)
