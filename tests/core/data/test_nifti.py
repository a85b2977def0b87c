import nibabel as nib
import numpy as np
import pytest

from core.data import DataError
from core.data.nifti import nifti_bytes, read_header, read_volume, same_grid, write_volume
from tests.builders import AFFINE, SHAPE, gzip_garbage, truncate, write_raw


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
