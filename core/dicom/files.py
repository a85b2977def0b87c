"""The DICOM files of a folder as hospitals send them: found, read, their pixels decoded.

A file is DICOM when pydicom reads it as a Part 10 file (128-byte preamble, ``DICM``),
or, for exports that leave the preamble out (a bare file meta group or a bare dataset),
when it starts like a dataset and, read with ``force=True``, holds an image: a valid
SOPClassUID, Rows, Columns and BitsAllocated. ``force=True`` alone accepts nearly any
bytes, so nothing else is taken for DICOM.

Pixel data is decoded by pydicom's own plugins: uncompressed and RLE natively, JPEG
Lossless, JPEG-LS and JPEG 2000 through python-gdcm, pyjpegls and pylibjpeg-openjpeg
(project dependencies). A syntax without a decoder here is refused before any pixel is
read, naming the file, the transfer syntax and what to install.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core.data.problems import DataError

MAX_FILES = 20_000
"""Most files a series folder may hold (a whole-body CT has about 2,000 slices)."""
IMAGE_KEYWORDS = ("SOPClassUID", "Rows", "Columns", "BitsAllocated")
"""What a file read without its preamble must hold to be taken for a DICOM image."""
DATASET_GROUPS = (0x0002, 0x0008)
"""The groups a preamble-less file may start with: file meta, or a bare dataset."""

_JPEG = "python-gdcm"
_JPEG_LS = "python-gdcm (or pyjpegls)"
_JPEG_2000 = "python-gdcm (or pylibjpeg with pylibjpeg-openjpeg)"
_HTJ2K = "pylibjpeg with pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG_LS,
    "1.2.840.10008.1.2.4.81": _JPEG_LS,
    "1.2.840.10008.1.2.4.90": _JPEG_2000,
    "1.2.840.10008.1.2.4.91": _JPEG_2000,
    "1.2.840.10008.1.2.4.201": _HTJ2K,
    "1.2.840.10008.1.2.4.202": _HTJ2K,
    "1.2.840.10008.1.2.4.203": _HTJ2K,
}
"""Per compressed transfer syntax, the packages whose pydicom plugin decodes it."""


class DicomSeriesError(DataError):
    """A folder that does not hold one readable, regular CT series; names the folder."""


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file's header (no pixel data), and whether it lacked the preamble."""

    path: Path
    ds: pydicom.Dataset
    forced: bool = False


def shown(folder: Path, path: Path) -> str:
    """How messages name a file: relative to the user's folder."""
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def plural(n: int, noun: str) -> str:
    """``"1 file"``, ``"12 files"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def list_files(folder: Path) -> list[Path]:
    """Regular files under ``folder``, not following links out of it.

    Raises:
        DicomSeriesError: for more than :data:`MAX_FILES` files.
    """
    found: list[Path] = []
    for root, _, names in os.walk(folder, followlinks=False):
        for name in sorted(names):
            path = Path(root, name)
            if path.is_symlink() or not path.is_file():
                continue
            found.append(path)
            if len(found) > MAX_FILES:
                raise DicomSeriesError(folder, f"more than {MAX_FILES} files; give one series")
    return found


def _starts_like_a_dataset(path: Path) -> bool:
    """Whether a file's first bytes are a little-endian tag of group 0002 or 0008."""
    with path.open("rb") as f:
        head = f.read(4)
    if len(head) < 4:
        return False
    group, element = int.from_bytes(head[:2], "little"), int.from_bytes(head[2:], "little")
    return group in DATASET_GROUPS and element < 0x1000


def _is_image(ds: pydicom.Dataset) -> bool:
    if any(keyword not in ds for keyword in IMAGE_KEYWORDS):
        return False
    try:
        return UID(str(ds.SOPClassUID)).is_valid and int(ds.Rows) > 0 and int(ds.Columns) > 0
    except (TypeError, ValueError):
        return False


def _with_syntax(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Name the transfer syntax a bare dataset was read in, for the pixel decoders."""
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit:
            syntax = ImplicitVRLittleEndian
        else:
            syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _read(path: Path, forced: bool, stop_before_pixels: bool) -> pydicom.Dataset:
    if not forced:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    with warnings.catch_warnings():  # pydicom warns about each odd element it guesses
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    return _with_syntax(ds)


def read_header(folder: Path, path: Path) -> DicomFile | None:
    """A file's DICOM header, with or without its preamble, or ``None`` if not DICOM.

    Raises:
        DicomSeriesError: naming the file, for a DICOM file (it has the ``DICM`` prefix)
            that cannot be read: truncated or corrupt.
    """
    try:
        return DicomFile(path, pydicom.dcmread(path, stop_before_pixels=True))
    except InvalidDicomError:
        pass
    except Exception as e:  # a truncated or corrupt file: pydicom raises many kinds
        raise DicomSeriesError(folder, f"{shown(folder, path)}: unreadable DICOM ({e})") from e
    if not _starts_like_a_dataset(path):
        return None
    try:
        ds = _read(path, forced=True, stop_before_pixels=True)
    except Exception:  # forced parsing of bytes that are no dataset: any kind
        return None
    return DicomFile(path, ds, forced=True) if _is_image(ds) else None


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (see :func:`read_header`); never raises."""
    try:
        return read_header(path.parent, path) is not None
    except (DicomSeriesError, OSError):
        return False


def decoder_problem(syntax: str) -> str | None:
    """Why pixel data in ``syntax`` cannot be decoded here, and the cure; ``None`` if it can."""
    uid = UID(syntax)
    named = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (
            f"pixels in transfer syntax {named}, which no installed decoder reads; have "
            "the PACS send the series uncompressed or in JPEG Lossless, JPEG-LS, "
            "JPEG 2000 or RLE"
        )
    if decoder.is_available:
        return None
    packages = DECODER_PACKAGES.get(str(uid), "a pydicom pixel data plugin for it")
    return (
        f"pixels in {named} and no decoder for it is installed; install {packages} "
        "(bash scripts/setup.sh installs the project's decoders)"
    )


def check_decodable(folder: Path, files: list[DicomFile]) -> None:
    """Refuse, before reading any pixel, a series with a transfer syntax not decodable here.

    Raises:
        DicomSeriesError: naming the first file in that syntax and what to install.
    """
    checked: set[str] = set()
    for f in files:
        syntax = str(f.ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        if syntax in checked:
            continue
        checked.add(syntax)
        problem = decoder_problem(syntax)
        if problem is not None:
            raise DicomSeriesError(folder, f"{shown(folder, f.path)}: {problem}")


def hounsfield(folder: Path, file: DicomFile, rows: int, columns: int) -> NDArray[np.float64]:
    """One slice's values in HU, indexed ``[row, column]``.

    Raises:
        DicomSeriesError: naming the file, if it cannot be read or decoded again.
    """
    name = shown(folder, file.path)
    try:
        ds = _read(file.path, file.forced, stop_before_pixels=False)
    except Exception as e:  # changed or truncated since its header was read
        raise DicomSeriesError(folder, f"{name}: unreadable DICOM ({e})") from e
    try:
        pixels = ds.pixel_array
    except Exception as e:  # corrupt pixel data: many kinds
        syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "?")))
        raise DicomSeriesError(
            folder,
            f"{name}: cannot decode the pixels (transfer syntax {syntax.name}: {e})",
        ) from e
    if pixels.shape != (rows, columns):
        raise DicomSeriesError(folder, f"{name}: pixels of shape {pixels.shape}")
    hu: NDArray[np.float64] = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    return hu
