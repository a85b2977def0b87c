"""Validated NIfTI reading and deterministic, atomic NIfTI writing (nibabel)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from core.data.problems import DataError
from core.io import atomic_write_bytes

NIFTI_ENDINGS = (".nii.gz", ".nii")
_AFFINE_ATOL_MM = 1e-3


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


def _open(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise DataError(path, "file not found")
    if not has_nifti_ending(path):
        raise DataError(path, "expected a NIfTI file ending in .nii.gz or .nii")
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error) as e:
        raise DataError(path, f"not a readable NIfTI file ({e})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise DataError(path, f"expected a NIfTI image, found {type(img).__name__}")
    return img


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


def _checked(path: Path) -> tuple[nib.Nifti1Image, Header]:
    img = _open(path)
    shape = _shape3d(path, tuple(img.shape))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(path, "affine is degenerate (zero or non-finite voxel spacing)")
    return img, Header(path, shape, affine)


def read_header(path: str | Path) -> Header:
    """Read and check a NIfTI header: 3D, with a usable affine.

    Raises:
        DataError: naming the file, if it is missing, unreadable, not 3D or degenerate.
    """
    return _checked(Path(path))[1]


def read_volume(path: str | Path) -> Volume:
    """Read a whole 3D NIfTI volume, checking the header and every voxel.

    Raises:
        DataError: naming the file, for a missing, corrupt, truncated, non-3D or
            non-finite volume.
    """
    img, header = _checked(Path(path))
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(header.path, f"truncated or corrupt voxel data ({e})") from None
    array = np.asarray(data).reshape(header.shape)
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
