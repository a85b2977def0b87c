import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from core.data import DataError
from core.data.nifti import (
    MAX_VOXELS_ENV,
    max_voxels,
    nifti_bytes,
    read_header,
    read_volume,
    same_grid,
    write_volume,
)
from tests.builders import AFFINE, SHAPE, gzip_garbage, truncate, write_raw
from tests.core.data.hostile import gzip_bomb, header_bytes, header_only


def test_write_then_read_is_voxel_identical(tmp_path):
    array = np.random.default_rng(0).integers(-1024, 3000, SHAPE).astype(np.int16)
    path = write_volume(tmp_path / "ct.nii.gz", array, AFFINE)
    vol = read_volume(path)
    assert vol.array.dtype == np.int16
    assert np.array_equal(vol.array, array)
    assert np.allclose(vol.header.affine, AFFINE)
    assert vol.header.spacing == (2.0, 2.0, 2.0)
    assert vol.header.orientation == "RAS"


def test_written_bytes_are_reproducible():
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    assert nifti_bytes(array, AFFINE, gz=True) == nifti_bytes(array, AFFINE, gz=True)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        read_volume(tmp_path / "nope.nii.gz")
    assert info.value.path.name == "nope.nii.gz"


def test_not_a_nifti(tmp_path):
    path = gzip_garbage(tmp_path / "ct.nii.gz")
    with pytest.raises(DataError, match="not a readable NIfTI") as info:
        read_volume(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_truncated_file_is_reported(tmp_path, name):
    array = np.random.default_rng(1).integers(-1000, 1000, (32, 32, 32)).astype(np.int16)
    path = truncate(write_volume(tmp_path / name, array, AFFINE))
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        read_volume(path)
    assert info.value.path == path


def test_2d_image_is_refused(tmp_path):
    path = write_raw(tmp_path / "slice.nii.gz", np.zeros((16, 16), np.int16))
    with pytest.raises(DataError, match=r"2D .* expected one 3D volume"):
        read_header(path)


def test_4d_image_is_refused(tmp_path):
    path = write_raw(tmp_path / "dyn.nii.gz", np.zeros((*SHAPE, 2), np.int16))
    with pytest.raises(DataError, match=r"4D with shape \(16, 16, 16, 2\)"):
        read_volume(path)


def test_trailing_singleton_axis_is_a_3d_volume(tmp_path):
    array = np.ones((*SHAPE, 1), np.int16)
    vol = read_volume(write_raw(tmp_path / "one.nii.gz", array))
    assert vol.array.shape == SHAPE


def test_nan_voxels_are_refused(tmp_path):
    array = np.zeros(SHAPE, np.float32)
    array[3, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        read_volume(write_volume(tmp_path / "nan.nii.gz", array, AFFINE))


def test_degenerate_affine_is_refused(tmp_path):
    affine = AFFINE.copy()
    affine[2, 2] = 0.0
    img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), None)
    img.header.set_sform(affine, code=1)  # nibabel refuses such a qform; a broken tool may not
    path = tmp_path / "flat.nii.gz"
    img.to_filename(path)
    with pytest.raises(DataError, match="degenerate"):
        read_header(path)


def test_wrong_extension_is_refused(tmp_path):
    path = tmp_path / "ct.mha"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=r"\.nii\.gz or \.nii"):
        read_header(path)


def test_same_grid_explains_differences(tmp_path):
    a = read_header(write_volume(tmp_path / "a.nii.gz", np.zeros(SHAPE, np.int16), AFFINE))
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    b = read_header(write_volume(tmp_path / "b.nii.gz", np.zeros(SHAPE, np.int16), shifted))
    c = read_header(write_volume(tmp_path / "c.nii.gz", np.zeros((16, 16, 8), np.int16), AFFINE))
    assert same_grid(a, a) is None
    assert "affine differs" in (same_grid(a, b) or "")
    assert "shape (16, 16, 8)" in (same_grid(a, c) or "")


def _peak_bytes(action) -> int:
    """Peak memory traced (numpy arrays included) while ``action`` runs."""
    tracemalloc.start()
    try:
        action()
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_header_declaring_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    path = header_only(tmp_path / "ct.nii", (1024, 1024, 1024))  # 2 GiB declared, 352 bytes
    with pytest.raises(DataError, match=r"more than the .* allowed"):
        read_volume(path)
    path = header_only(tmp_path / "small.nii", (256, 256, 64))  # within the cap
    with pytest.raises(DataError, match=r"truncated .* declares 8,388,960 bytes .* holds 352"):
        read_header(path)
    assert _peak_bytes(lambda: read_volume(path)) < 2**20


def test_a_short_gzip_stream_with_a_large_declared_size_is_counted_not_allocated(tmp_path):
    path = header_only(tmp_path / "ct.nii.gz", (512, 512, 200))  # 100 MiB declared
    with pytest.raises(DataError, match="truncated or corrupt voxel data") as info:
        read_volume(path)
    assert info.value.path == path
    assert _peak_bytes(lambda: read_volume(path)) < 8 * 2**20


def test_a_gzip_bomb_is_inflated_no_further_than_its_declared_size(tmp_path):
    path = gzip_bomb(tmp_path / "ct.nii.gz", (32, 32, 32), inflated_bytes=64 * 2**20)
    assert path.stat().st_size < 2**20
    vol = read_volume(path)
    assert vol.array.shape == (32, 32, 32) and not vol.array.any()
    assert _peak_bytes(lambda: read_volume(path)) < 8 * 2**20  # not the 64 MiB inside


def test_a_gzip_bomb_declaring_a_huge_volume_is_refused_from_its_header(tmp_path):
    path = gzip_bomb(tmp_path / "ct.nii.gz", (4096, 4096, 4096), inflated_bytes=2 * 2**20)
    with pytest.raises(DataError, match=r"declared shape \(4096, 4096, 4096\) .* CSFL_MAX_VOXELS"):
        read_volume(path)


def test_the_voxel_cap_comes_from_the_environment(tmp_path, monkeypatch):
    path = write_volume(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), AFFINE)
    monkeypatch.setenv(MAX_VOXELS_ENV, str(16**3 - 1))
    with pytest.raises(DataError, match="4,096 voxels, more than the 4,095 allowed"):
        read_volume(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, str(16**3))
    assert read_volume(path).array.shape == SHAPE
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(ValueError, match="CSFL_MAX_VOXELS='lots': expected a positive whole"):
        max_voxels()


def test_voxels_placed_absurdly_far_into_the_file_are_refused(tmp_path):
    raw = bytearray(header_bytes(SHAPE))
    raw[108:112] = np.float32(3e9).tobytes()  # vox_offset
    path = tmp_path / "ct.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="puts the voxels at byte 3e"):
        read_header(path)


def test_running_out_of_memory_names_the_file(tmp_path, monkeypatch):
    path = write_volume(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), AFFINE)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(np, "asanyarray", no_memory)
    with pytest.raises(DataError, match="not enough memory to read") as info:
        read_volume(path)
    assert info.value.path == path
