"""``csfl site check`` and ``csfl predict`` on hostile files: one line each, no traceback."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from core.bundle import Bundle, save_bundle
from core.data.nifti import write_volume
from core.data.transforms import Preprocessing
from csfl import app
from tests.builders import AFFINE, SHAPE, nnunet_dataset, truncate, write_raw
from tests.core.data.hostile import gzip_bomb, header_only
from tests.models import tiny_model


def _truncated(path: Path) -> Path:
    image = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)
    return truncate(write_volume(path, image, AFFINE))


def _absurd_header(path: Path) -> Path:
    return header_only(path, (1024, 1024, 1024))


def _bomb(path: Path) -> Path:
    return gzip_bomb(path, (4096, 4096, 4096), inflated_bytes=2 * 2**20)


def _nan(path: Path) -> Path:
    image = np.zeros(SHAPE, np.float32)
    image[3, 4, 5] = np.nan
    return write_raw(path, image)


def _huge_spacing(path: Path) -> Path:  # 16^3 voxels of 1 m: 5e11 voxels at 2 mm
    return write_volume(path, np.zeros(SHAPE, np.int16), np.diag([1000.0, 1000.0, 1000.0, 1.0]))


HOSTILE = {
    "truncated": (_truncated, "truncated or corrupt"),
    "absurd header": (_absurd_header, "more than the 536,870,912 allowed"),
    "gzip bomb": (_bomb, "more than the 536,870,912 allowed"),
    "NaN voxels": (_nan, "voxels contain NaN or infinity"),
}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    model = tiny_model(("liver", "spleen"))
    model.encoder.freeze()
    save_bundle(Bundle(model, Preprocessing(spacing_mm=(2.0, 2.0, 2.0)), (16, 16, 16)), folder)
    return folder


def _one_error_line(result, path: Path, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize(
    "kind", [*HOSTILE, "resampled too large"], ids=[*HOSTILE, "resampled too large"]
)
def test_predict_ends_a_hostile_ct_with_one_line_and_exit_2(bundle_dir, tmp_path, kind):
    make, expected = HOSTILE.get(kind, (_huge_spacing, "resampled to (2.0, 2.0, 2.0) mm"))
    name = "ct.nii" if kind == "absurd header" else "ct.nii.gz"
    path = make(tmp_path / name)
    out = tmp_path / "out" / "seg.nii.gz"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(path), "-o", str(out)])
    _one_error_line(result, path, expected)
    assert not out.exists()


def test_predict_still_segments_a_good_ct(bundle_dir, tmp_path):
    path = write_volume(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), AFFINE)
    out = tmp_path / "seg.nii.gz"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_site_check_reports_a_hostile_image_as_one_problem(tmp_path, kind):
    dataset = nnunet_dataset(tmp_path / "Dataset001_A", n_cases=2)
    image = dataset.cases[0].image
    make, expected = HOSTILE[kind]
    make(image)
    result = CliRunner().invoke(app, ["site", "check", str(tmp_path)])
    # site check reports every problem and exits 1 if any is an error (its documented rule)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stdout.splitlines() if line.strip().startswith("ERROR")]
    assert len(errors) == 1, errors
    assert f"{image}: " in errors[0] and expected in errors[0]
    assert "1/2 cases usable" in result.stdout and "NOT READY" in result.stdout
