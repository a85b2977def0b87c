"""Read one DICOM CT series from a folder into a NIfTI image in RAS+ world coordinates.

The geometry comes from the headers (pydicom reads them): slices are sorted by their
position projected on the slice normal, spacing and orientation from the image plane
module, HU from the rescale slope and intercept. The voxel array keeps DICOM's order,
``volume[column, row, slice]`` with slice ``k`` the ``k``-th dataset returned, so a label
map predicted on this grid maps straight back onto the source images; only the affine
changes from DICOM's LPS to NIfTI's RAS (x and y negated).

Files come as hospitals send them (``core.dicom.files``): compressed, with or without
the preamble. A slice sent twice (one SOPInstanceUID, or one position with the same
pixels) is read once, with a warning. A series is refused, with one line naming the
folder, when it cannot be a regular 3D grid: slices off the normal (gantry tilt), a
missing slice, non-uniform spacing, two different slices at one position, mixed
orientations or sizes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage

from core.dicom.files import (
    DicomFile,
    DicomSeriesError,
    check_decodable,
    hounsfield,
    list_files,
    plural,
    read_header,
    shown,
)

__all__ = ["LPS_TO_RAS", "MAX_SIDE", "DicomSeriesError", "read_series"]

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM's patient coordinates (LPS) to NIfTI's (RAS), and back (it is its own inverse)."""

MAX_SIDE = 2048
"""Largest Rows or Columns accepted."""
MAX_VOXELS = 1024**3
"""Largest volume read (4 GiB as float32)."""
TILT_TOLERANCE_DEG = 0.05
"""Largest angle between the slice stacking direction and the slice normal."""
SPACING_TOLERANCE = 0.01
"""Largest relative deviation of a slice gap from the median gap."""
ORIENTATION_TOLERANCE = 1e-4
SAME_POSITION_MM = 1e-3
"""Slices closer than this along the normal are at one position."""


def _headers(folder: Path) -> tuple[list[DicomFile], list[Path]]:
    """Every DICOM file's header under ``folder``, and the files that are not DICOM.

    Raises:
        DicomSeriesError: for a folder without files, or without any DICOM file.
    """
    files = list_files(folder)
    if not files:
        raise DicomSeriesError(folder, "no files; expected a DICOM CT series")
    headers, not_dicom = [], []
    for path in files:
        header = read_header(folder, path)
        if header is None:
            not_dicom.append(path)
        else:
            headers.append(header)
    if not headers:
        raise DicomSeriesError(
            folder,
            f"{plural(len(files), 'file')}, none DICOM (e.g. {shown(folder, files[0])}); "
            "expected a DICOM CT series",
        )
    return headers, not_dicom


def _describe_series(uid: str, members: Sequence[DicomFile]) -> str:
    first = members[0].ds
    description = str(first.get("SeriesDescription", "")).strip() or "no description"
    return f"{uid} ({description}, {len(members)} slices)"


def _choose_series(
    folder: Path, headers: list[DicomFile], not_dicom: int, series_uid: str | None
) -> list[DicomFile]:
    """The CT images of the one series asked for, or an error listing what is there."""
    if any(h.ds.get("SOPClassUID") == EnhancedCTImageStorage for h in headers):
        raise DicomSeriesError(folder, "enhanced (multi-frame) CT is not supported")
    series: dict[str, list[DicomFile]] = {}
    for h in headers:
        is_ct = h.ds.get("SOPClassUID") == CTImageStorage and h.ds.get("Modality") == "CT"
        # A scout (localizer) image may share the series UID; it is no slice of the volume.
        if is_ct and "LOCALIZER" not in h.ds.get("ImageType", []):
            series.setdefault(str(h.ds.get("SeriesInstanceUID", "")), []).append(h)
    if not series:
        kinds = Counter(str(h.ds.get("Modality", "?")) for h in headers)
        found = ", ".join(f"{n} {m}" for m, n in sorted(kinds.items()))
        raise DicomSeriesError(
            folder,
            f"no CT image series (found {found}; {plural(not_dicom, 'file')} not DICOM)",
        )
    listing = "; ".join(_describe_series(uid, m) for uid, m in sorted(series.items()))
    if series_uid is not None:
        if series_uid not in series:
            raise DicomSeriesError(folder, f"no CT series {series_uid}; found: {listing}")
        return series[series_uid]
    if len(series) > 1:
        raise DicomSeriesError(
            folder, f"{len(series)} CT series, choose one by SeriesInstanceUID: {listing}"
        )
    return next(iter(series.values()))


def _floats(folder: Path, h: DicomFile, keyword: str, n: int) -> NDArray[np.float64]:
    value = h.ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DicomSeriesError(folder, f"{shown(folder, h.path)}: {keyword} must hold {n} numbers")
    return out


def _same_image(folder: Path, a: DicomFile, b: DicomFile) -> bool:
    """Whether two slices hold the same HU at the same place (a copy of one slice)."""
    if a.path.read_bytes() == b.path.read_bytes():
        return True
    same_place = all(
        np.allclose(_floats(folder, a, keyword, n), _floats(folder, b, keyword, n), atol=1e-4)
        for keyword, n in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6))
    )
    if not same_place:
        return False
    rows, columns = int(a.ds.get("Rows", 0)), int(a.ds.get("Columns", 0))
    if (int(b.ds.get("Rows", 0)), int(b.ds.get("Columns", 0))) != (rows, columns):
        return False
    check_decodable(folder, [a, b])
    return np.array_equal(
        hounsfield(folder, a, rows, columns), hounsfield(folder, b, rows, columns)
    )


def _deduplicate(folder: Path, members: list[DicomFile]) -> list[DicomFile]:
    """The series with each slice sent twice read once; warns naming the copies.

    Raises:
        DicomSeriesError: for one SOPInstanceUID on two different images, or two
            different images at one position.
    """
    kept: dict[str, DicomFile] = {}
    copies: list[tuple[DicomFile, DicomFile]] = []
    for h in members:
        uid = str(h.ds.get("SOPInstanceUID", ""))
        first = kept.get(uid)
        if first is None or not uid:
            kept[uid or str(h.path)] = h
        elif _same_image(folder, first, h):
            copies.append((first, h))
        else:
            raise DicomSeriesError(
                folder,
                f"{shown(folder, h.path)} and {shown(folder, first.path)}: one "
                f"SOPInstanceUID for two different images",
            )
    unique = list(kept.values())
    orientation = _floats(folder, unique[0], "ImageOrientationPatient", 6)
    normal = np.cross(orientation[:3], orientation[3:])
    if np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):  # else _geometry refuses it
        heights = [float(_floats(folder, h, "ImagePositionPatient", 3) @ normal) for h in unique]
        stacked: list[tuple[float, DicomFile]] = []
        for i in np.argsort(heights, kind="stable"):
            height, h = heights[i], unique[i]
            if not stacked or height - stacked[-1][0] >= SAME_POSITION_MM:
                stacked.append((height, h))
            elif _same_image(folder, stacked[-1][1], h):
                copies.append((stacked[-1][1], h))
            else:
                raise DicomSeriesError(
                    folder,
                    f"{shown(folder, h.path)}: two slices at the same position "
                    f"({shown(folder, stacked[-1][1].path)} holds a different image there)",
                )
        unique = [h for _, h in stacked]
    if copies:
        first, copy = copies[0]
        log.warning(
            "%s: %s skipped, copies of slices already read (e.g. %s is %s)",
            folder,
            plural(len(copies), "duplicate file"),
            shown(folder, copy.path),
            shown(folder, first.path),
        )
    return unique


@dataclass(frozen=True)
class _Geometry:
    order: list[int]  # file order -> slice order
    affine_lps: NDArray[np.float64]
    rows: int
    columns: int


def _geometry(folder: Path, members: Sequence[DicomFile]) -> _Geometry:
    """Sort the slices and check that they form a regular, orthogonal 3D grid."""
    first = members[0]
    rows, columns = int(first.ds.get("Rows", 0)), int(first.ds.get("Columns", 0))
    if not (0 < rows <= MAX_SIDE and 0 < columns <= MAX_SIDE):
        raise DicomSeriesError(folder, f"image size {rows}x{columns} outside 1..{MAX_SIDE}")
    if rows * columns * len(members) > MAX_VOXELS:
        raise DicomSeriesError(folder, f"more than {MAX_VOXELS} voxels")
    if len(members) < 2:
        raise DicomSeriesError(folder, "a single slice is not a 3D volume")
    orientation = _floats(folder, first, "ImageOrientationPatient", 6)
    spacing = _floats(folder, first, "PixelSpacing", 2)
    for h in members[1:]:
        name = shown(folder, h.path)
        if (int(h.ds.get("Rows", 0)), int(h.ds.get("Columns", 0))) != (rows, columns):
            raise DicomSeriesError(folder, f"{name}: image size differs within the series")
        if not np.allclose(
            _floats(folder, h, "ImageOrientationPatient", 6),
            orientation,
            atol=ORIENTATION_TOLERANCE,
        ):
            raise DicomSeriesError(folder, f"{name}: orientation differs within the series")
        if not np.allclose(_floats(folder, h, "PixelSpacing", 2), spacing, rtol=1e-4):
            raise DicomSeriesError(folder, f"{name}: pixel spacing differs within the series")
    if np.any(spacing <= 0):
        raise DicomSeriesError(folder, f"PixelSpacing must be positive, got {spacing.tolist()}")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomSeriesError(folder, "ImageOrientationPatient is not two orthonormal vectors")
    positions = np.stack([_floats(folder, h, "ImagePositionPatient", 3) for h in members])
    heights = positions @ normal
    order = [int(i) for i in np.argsort(heights, kind="stable")]
    positions, heights = positions[order], heights[order]
    gaps = np.diff(heights)
    if np.any(gaps < SAME_POSITION_MM):  # _deduplicate has kept one of each copy
        k = int(np.argmin(gaps))
        name = shown(folder, members[order[k + 1]].path)
        raise DicomSeriesError(folder, f"{name}: two slices at the same position")
    steps = np.diff(positions, axis=0)
    off_normal = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    tilt = float(np.degrees(np.arctan2(off_normal, gaps)).max())
    if tilt > TILT_TOLERANCE_DEG:
        raise DicomSeriesError(
            folder,
            f"slices are stacked {tilt:.2f} degrees off their normal (gantry tilt); "
            "resample to an orthogonal grid first",
        )
    step = float(np.median(gaps))
    if np.any(np.abs(gaps - step) > SPACING_TOLERANCE * step):
        k = int(np.argmax(gaps))
        ratio = gaps[k] / step
        if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.1:
            raise DicomSeriesError(
                folder,
                f"missing slice: a gap of {gaps[k]:.2f} mm after z={heights[k]:.2f} "
                f"where the spacing is {step:.2f} mm",
            )
        raise DicomSeriesError(
            folder,
            f"non-uniform slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm); "
            "resample to a regular grid first",
        )
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # along a row: the column index, column spacing
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    return _Geometry(order, affine, rows, columns)


def read_series(
    folder: str | Path, series_uid: str | None = None
) -> tuple[nib.Nifti1Image, list[pydicom.Dataset]]:
    """Read a CT series: its HU volume in RAS+ world coordinates and its sorted headers.

    Args:
        folder: a folder holding the series' files (subfolders are searched too; files
            that are not DICOM, and localizer images, are skipped; files without the
            DICOM preamble are read when they hold an image).
        series_uid: the SeriesInstanceUID to read when the folder holds several.

    Returns:
        The image (``int16`` HU when every value is a whole number in range, else
        ``float32``), indexed ``[column, row, slice]``, and the series' datasets in
        slice order, headers only (their pixel data is dropped).

    Raises:
        DicomSeriesError: naming the folder, for a folder without files, without DICOM
            files or without exactly one CT series (or without ``series_uid``), a series
            that is not a regular 3D grid, or pixels that cannot be decoded here (the
            message names the file, its transfer syntax and what to install).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(folder, "expected a folder of DICOM CT files")
    headers, not_dicom = _headers(folder)
    members = _deduplicate(folder, _choose_series(folder, headers, len(not_dicom), series_uid))
    geometry = _geometry(folder, members)
    check_decodable(folder, members)
    ordered = [members[i] for i in geometry.order]
    volume = np.empty((geometry.columns, geometry.rows, len(ordered)), dtype=np.float32)
    for k, h in enumerate(ordered):
        volume[:, :, k] = hounsfield(folder, h, geometry.rows, geometry.columns).T
    whole = np.array_equal(volume, np.rint(volume))
    info = np.iinfo(np.int16)
    if whole and volume.min() >= info.min and volume.max() <= info.max:
        data: NDArray[np.generic] = volume.astype(np.int16)
    else:
        data = volume
    image = nib.Nifti1Image(data, LPS_TO_RAS @ geometry.affine_lps)
    image.header.set_xyzt_units("mm")
    return image, [h.ds for h in ordered]
