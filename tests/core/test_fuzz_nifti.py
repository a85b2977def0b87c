"""Property tests: a mutated NIfTI file is read correctly or refused with a DataError."""

import gzip
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import DataError
from core.data.nifti import MAX_VOXELS_ENV, nifti_bytes, read_volume
from tests.builders import AFFINE

SHAPE = (6, 5, 4)
ARRAY = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
VALID = nifti_bytes(ARRAY, AFFINE, gz=False)
HEADER = 352
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Header fields worth lying about: (byte offset, numpy dtype) in a little-endian NIfTI-1.
FIELDS = {
    "sizeof_hdr": (0, "<i4"),
    "dim": (40, "<i2"),  # 8 of them
    "datatype": (70, "<i2"),
    "bitpix": (72, "<i2"),
    "pixdim": (76, "<f4"),  # 8 of them
    "vox_offset": (108, "<f4"),
    "scl_slope": (112, "<f4"),
    "scl_inter": (116, "<f4"),
    "qform_code": (252, "<i2"),
    "sform_code": (254, "<i2"),
    "quatern_b": (256, "<f4"),
    "srow_x": (280, "<f4"),
}
NUMBERS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, 1, -1, 3, 4, 7, 8, 32767, -32768, 2**31 - 1]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


def _read(raw: bytes, name: str) -> None:
    """Read ``raw`` as a file; a result must be exact, anything else a DataError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(gzip.compress(raw, mtime=0) if name.endswith(".gz") else raw)
        # A low cap keeps every accepted read small whatever the header claims.
        with mock.patch.dict(os.environ, {MAX_VOXELS_ENV: str(2**16)}):
            try:
                volume = read_volume(path)
            except DataError as e:
                assert e.path == path and str(e).startswith(f"{path}: ")
                return
        assert volume.array.ndim == 3 and volume.array.shape == volume.header.shape
        assert volume.array.size <= 2**16
        if raw == VALID:
            assert np.array_equal(volume.array, ARRAY)


def _set(raw: bytearray, field: str, index: int, value: float) -> None:
    offset, dtype = FIELDS[field]
    item = np.dtype(dtype)
    if item.kind == "i":
        info = np.iinfo(item)
        value = int(np.clip(np.nan_to_num(value), info.min, info.max))
    at = offset + index * item.itemsize
    raw[at : at + item.itemsize] = np.asarray(value, dtype=item).tobytes()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(sorted(FIELDS)), st.integers(0, 7), NUMBERS), max_size=4
    ),
    gz=st.booleans(),
)
def test_lying_header_fields(edits, gz):
    raw = bytearray(VALID)
    for field, index, value in edits:
        n = 8 if field in ("dim", "pixdim") else 4 if field == "srow_x" else 1
        _set(raw, field, index % n, value)
    _read(bytes(raw), "ct.nii.gz" if gz else "ct.nii")


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, HEADER - 1), st.integers(0, 255)), max_size=8),
    keep=st.integers(0, len(VALID)),
    gz=st.booleans(),
)
def test_mutated_and_truncated_bytes(flips, keep, gz):
    raw = bytearray(VALID)
    for at, byte in flips:
        raw[at] = byte
    _read(bytes(raw[:keep]), "ct.nii.gz" if gz else "ct.nii")


@FUZZ
@given(junk=st.binary(max_size=64), cut=st.integers(0, 200))
def test_corrupt_gzip_streams(junk, cut):
    packed = bytearray(gzip.compress(VALID, mtime=0))
    packed[cut : cut + len(junk)] = junk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.nii.gz"
        path.write_bytes(bytes(packed))
        try:
            volume = read_volume(path)
        except DataError as e:
            assert e.path == path
            return
        assert volume.array.shape == volume.header.shape
