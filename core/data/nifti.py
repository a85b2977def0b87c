"""Validated NIfTI reading and deterministic, atomic NIfTI writing (nibabel).

A file's header is never trusted. Before any voxel array is allocated, reading checks
what the header declares (shape times data type, and where the voxels start) against:

- a cap on voxels, :data:`DEFAULT_MAX_VOXELS` (512 Mi voxels, e.g. 1024 x 1024 x 512),
  which the environment variable ``CSFL_MAX_VOXELS`` overrides;
- the file itself: an uncompressed ``.nii`` must hold every declared byte, and a
  ``.nii.gz`` stream is inflated at most to the declared size (header included), so a
  small file that inflates to gigabytes is read no further than its header says. A large
  declared gzip payload is first counted through a bounded stream, so that a truncated
  stream is found without allocating for it.

Any of these, a corrupt file, or running out of memory while reading is a
:class:`~core.data.problems.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from core.data.problems import DataError
from core.io import atomic_write_bytes

NIFTI_ENDINGS = (".nii.gz", ".nii")
MAX_VOXELS_ENV = "CSFL_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**29
MAX_HEADER_BYTES = 16 * 2**20  # header plus extensions: the largest voxel offset accepted
# Below this a gzip payload is simply read (a truncated one costs at most this much memory);
# above it the stream is counted first, so a short stream is found before allocating.
_COUNT_GZIP_ABOVE_BYTES = 64 * 2**20
_CHUNK_BYTES = 2**20
_AFFINE_ATOL_MM = 1e-3
# What nibabel, gzip, zlib and numpy raise on a corrupt or hostile file.
_CORRUPT = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
_CORRUPT_OR_ABSURD = (*_CORRUPT, OverflowError, struct.error)


def max_voxels() -> int:
    """The most voxels one volume may hold: ``CSFL_MAX_VOXELS``, else the default.

    Raises:
        ValueError: if ``CSFL_MAX_VOXELS`` is set but is not a positive whole number.
    """
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_VOXELS_ENV}={raw!r}: expected a positive whole number of voxels")
    return int(raw)


def check_voxel_count(path: Path, count: float, what: str) -> None:
    """Refuse a grid of more voxels than :func:`max_voxels` allows.

    Args:
        path: the file the grid comes from, for the message.
        count: the grid's voxels.
        what: the grid, as the message names it, e.g. ``"shape (512, 512, 300)"``.

    Raises:
        DataError: naming ``path``, the grid and the cap.
    """
    cap = max_voxels()
    if not count <= cap:
        raise DataError(
            path,
            f"{what} holds {count:,.0f} voxels, more than the {cap:,} allowed "
            f"(set {MAX_VOXELS_ENV} to raise the cap)",
        )


@dataclass(frozen=True)
class Header:
    """What a NIfTI header says, read without loading the voxels."""

    path: Path
    shape: tuple[int, int, int]
    affine: NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        x, y, z = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(x), float(y), float(z)

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes, e.g. ``"RAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))


@dataclass(frozen=True)
class Volume:
    """A 3D NIfTI volume: voxels and the voxel-to-world (RAS, mm) affine."""

    header: Header
    array: NDArray[np.generic]

    @property
    def path(self) -> Path:
        """The file it was read from."""
        return self.header.path


def has_nifti_ending(path: Path) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz``."""
    return path.name.endswith(NIFTI_ENDINGS)


def strip_nifti_ending(name: str) -> str:
    """``"case_0000.nii.gz"`` -> ``"case_0000"``."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def _stream(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


@dataclass(frozen=True)
class _Declared:
    """What a header declares about the voxels: their shape, first byte and byte count."""

    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _declared(path: Path) -> _Declared:
    """Parse the header (and extensions) from a bounded prefix of the file."""
    kinds = (nib.Nifti1Header, nib.Nifti2Header)
    with _stream(path) as f:
        start = f.read(max(k.sizeof_hdr for k in kinds) + 4)
        kind = next((k for k in kinds if k.may_contain_header(start)), None)
        if kind is None:
            raise DataError(path, "not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)")
        unchecked = kind(start[: kind.sizeof_hdr], check=False)  # type: ignore[no-untyped-call]
        raw_offset = float(unchecked["vox_offset"])
        if not raw_offset <= MAX_HEADER_BYTES:  # also NaN
            raise DataError(
                path,
                f"header puts the voxels at byte {raw_offset:g}; expected at most "
                f"{MAX_HEADER_BYTES} (header and extensions)",
            )
        prefix = start + f.read(max(int(raw_offset) - len(start), 0))
    header = kind.from_fileobj(io.BytesIO(prefix))  # extensions cannot read past the prefix
    shape = tuple(int(n) for n in header.get_data_shape())
    if any(n < 0 for n in shape):
        raise DataError(path, f"header declares a negative axis length (shape {shape})")
    itemsize = int(header.get_data_dtype().itemsize)
    return _Declared(shape, int(header.get_data_offset()), math.prod(shape) * itemsize)


def _inflated_bytes(path: Path, limit: int) -> int:
    """How many bytes a gzip file inflates to, counting no further than ``limit``."""
    count = 0
    with gzip.open(path, "rb") as f:
        while count < limit and (chunk := f.read(min(_CHUNK_BYTES, limit - count))):
            count += len(chunk)
    return count


def _check_size(path: Path, declared: _Declared, count_gzip: bool) -> None:
    """Refuse a file that cannot hold the voxels its header declares."""
    needed = declared.offset + declared.nbytes
    if _is_gzip(path):
        if not count_gzip or declared.nbytes <= _COUNT_GZIP_ABOVE_BYTES:
            return
        held = _inflated_bytes(path, needed)
    else:
        held = path.stat().st_size
    if held < needed:
        raise DataError(
            path,
            f"truncated or corrupt voxel data: the header declares {needed:,} bytes "
            f"(shape {declared.shape}), the file holds {held:,}",
        )


def _open(path: Path, count_gzip: bool) -> tuple[nib.Nifti1Image, _Declared]:
    if not path.is_file():
        raise DataError(path, "file not found")
    if not has_nifti_ending(path):
        raise DataError(path, "expected a NIfTI file ending in .nii.gz or .nii")
    try:
        declared = _declared(path)
        _shape3d(path, declared.shape)
        check_voxel_count(path, math.prod(declared.shape), f"the declared shape {declared.shape}")
        _check_size(path, declared, count_gzip)
        img = nib.load(path)
    except _CORRUPT_OR_ABSURD as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"not a readable NIfTI file ({e})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise DataError(path, f"expected a NIfTI image, found {type(img).__name__}")
    return img, declared


def _shape3d(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    # Trailing singleton axes (X, Y, Z, 1) are a 3D volume written by a 4D-minded tool.
    core_shape = shape
    while len(core_shape) > 3 and core_shape[-1] == 1:
        core_shape = core_shape[:-1]
    if len(core_shape) != 3:
        kind = f"{len(core_shape)}D"
        raise DataError(path, f"image is {kind} with shape {shape}; expected one 3D volume")
    if min(core_shape) < 1:
        raise DataError(path, f"image has an empty axis (shape {shape})")
    return (int(core_shape[0]), int(core_shape[1]), int(core_shape[2]))


def _checked(path: Path, count_gzip: bool = False) -> tuple[nib.Nifti1Image, Header]:
    img, declared = _open(path, count_gzip)
    shape = _shape3d(path, declared.shape)
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
        degenerate = not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9
    except (ValueError, np.linalg.LinAlgError):
        degenerate = True
    if degenerate:
        raise DataError(path, "affine is degenerate (zero or non-finite voxel spacing)")
    return img, Header(path, shape, affine)


@contextmanager
def memory_named(path: Path, doing: str) -> Iterator[None]:
    """Turn running out of memory into a :class:`DataError` naming the file.

    Args:
        path: the file being worked on.
        doing: what needed the memory, e.g. ``"read (512, 512, 300) voxels"``.
    """
    try:
        yield
    except MemoryError:
        raise DataError(path, f"not enough memory to {doing}") from None


def read_header(path: str | Path) -> Header:
    """Read and check a NIfTI header: 3D, within the voxel cap, with a usable affine.

    An uncompressed file must also be long enough for its declared voxels.

    Raises:
        DataError: naming the file, if it is missing, unreadable, not 3D, too large,
            truncated or degenerate.
    """
    return _checked(Path(path))[1]


def read_volume(path: str | Path) -> Volume:
    """Read a whole 3D NIfTI volume, checking the header and every voxel.

    The declared size is checked against the voxel cap and the file before any voxel
    is read; a gzip stream is never inflated past it.

    Raises:
        DataError: naming the file, for a missing, corrupt, truncated, non-3D, too
            large or non-finite volume, or one that does not fit in memory.
    """
    img, header = _checked(Path(path), count_gzip=True)
    with memory_named(header.path, f"read {header.shape} voxels"):
        try:
            array = np.asarray(np.asanyarray(img.dataobj)).reshape(header.shape)
        except _CORRUPT as e:
            raise DataError(header.path, f"truncated or corrupt voxel data ({e})") from None
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise DataError(header.path, "voxels contain NaN or infinity")
    return Volume(header, array)


def read_image(path: str | Path) -> Volume:
    """Read a CT image: a checked 3D volume of numbers.

    Raises:
        DataError: as :func:`read_volume`, or for a non-numeric voxel type.
    """
    volume = read_volume(path)
    if volume.array.dtype.kind not in "iuf":
        raise DataError(volume.path, f"image has non-numeric dtype {volume.array.dtype}")
    return volume


def same_grid(a: Header, b: Header) -> str | None:
    """Why two headers do not describe the same voxel grid, or ``None`` if they do."""
    if a.shape != b.shape:
        return f"shape {b.shape} differs from {a.path.name}'s {a.shape}"
    if not np.allclose(a.affine, b.affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
        return f"affine differs from {a.path.name}'s (orientation, spacing or origin)"
    return None


def nifti_bytes(array: NDArray[np.generic], affine: NDArray[np.floating], gz: bool) -> bytes:
    """Encode a volume as NIfTI-1 bytes; gzip without a timestamp so bytes are reproducible."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def write_volume(
    path: str | Path, array: NDArray[np.generic], affine: NDArray[np.floating]
) -> Path:
    """Write a 3D volume atomically; ``.nii.gz`` or ``.nii`` from the file name.

    Raises:
        ValueError: if the array is not 3D or the file name has no NIfTI ending.
    """
    path = Path(path)
    if np.ndim(array) != 3:
        raise ValueError(f"{path}: expected a 3D array, got shape {np.shape(array)}")
    if not has_nifti_ending(path):
        raise ValueError(f"{path}: expected a file name ending in .nii.gz or .nii")
    return atomic_write_bytes(path, nifti_bytes(array, affine, gz=path.name.endswith(".gz")))
