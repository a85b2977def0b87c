"""Property tests: a mutated bundle manifest loads the same model or raises BundleError."""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bundle import MANIFEST, Bundle, BundleError, load_bundle, save_bundle
from core.data.transforms import Preprocessing
from tests.core.test_fuzz_dataset_json import JSON, _mutated
from tests.models import tiny_model

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63),
    st.floats(),
    st.sampled_from([0, -1, 1, 8, 16, 6000, 1e300, float("nan"), float("inf"), True]),
)


@pytest.fixture(scope="module")
def bundle() -> Iterator[tuple[Path, dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model(("liver", "spleen"))
        model.encoder.freeze()
        save_bundle(Bundle(model, Preprocessing(), (16, 16, 16)), folder)
        path = Path(folder) / MANIFEST
        yield Path(folder), json.loads(path.read_text())


def _check(folder: Path, original: dict[str, Any], manifest: Any) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))
    try:
        loaded = load_bundle(folder)
    except BundleError as e:
        assert str(e).startswith(str(folder))
        return
    finally:
        (folder / MANIFEST).write_text(json.dumps(original))
    # Whatever loaded holds exactly the weights the hashed files hold.
    assert loaded.model.encoder.weights_sha256() == original["encoder"]["weights_sha256"]
    assert all(side > 0 for side in loaded.roi_size)
    assert all(s > 0 for s in loaded.preprocessing.spacing_mm)
    with torch.no_grad():
        out = loaded.model(torch.zeros(1, 1, *loaded.roi_size))
    assert set(out) == {d["task"] for d in manifest["decoders"]}


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), JSON, st.booleans()), min_size=1, max_size=3)
)
def test_manifest_with_any_json_edits(bundle, edits):
    folder, manifest = bundle
    _check(folder, manifest, _mutated(manifest, edits))


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), NUMBERS, st.just(False)), min_size=1, max_size=3
    )
)
def test_manifest_with_numbers_anywhere(bundle, edits):
    folder, manifest = bundle
    _check(folder, manifest, _mutated(manifest, edits))


@settings(max_examples=40, deadline=None)
@given(file=st.text(alphabet="./encoderdcs_tfy", max_size=30) | st.sampled_from(["/", "..", "."]))
def test_weight_paths_never_leave_the_bundle(bundle, file):
    folder, manifest = bundle
    changed = json.loads(json.dumps(manifest))
    changed["encoder"]["file"] = file
    _check(folder, manifest, changed)
