"""Which output a prediction gets, and whether an input is a DICOM series folder.

A NIfTI label map suits any input; a DICOM Segmentation or RT Structure Set needs the
source CT series it refers to, so those formats need a DICOM input. A folder without
NIfTI files in it is read as a DICOM series, so that an empty folder, or one of other
files, is told what the DICOM reader found there rather than that it lacks NIfTI files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from core.data.nifti import has_nifti_ending
from core.data.problems import DataError
from core.dicom.files import is_dicom_file
from core.dicom.rtstruct import write_rtstruct
from core.dicom.seg import CONTENT_CREATOR, creator_name, write_seg
from core.dicom.tg263 import RoiNames

FILES_PROBED = 50
"""How many files of a folder are looked at to tell a DICOM folder."""


class OutputFormat(StrEnum):
    """What ``predict`` writes: a NIfTI label map, a DICOM SEG or an RT Structure Set."""

    NIFTI = "nifti"
    SEG = "seg"
    RTSTRUCT = "rtstruct"

    @property
    def needs_dicom(self) -> bool:
        """Whether the format refers to a source DICOM series."""
        return self is not OutputFormat.NIFTI


@dataclass(frozen=True)
class DicomNaming:
    """Who a SEG names as its content creator, and how an RTSTRUCT names its ROIs.

    Attributes:
        content_creator: the SEG's Content Creator's Name, a DICOM person name.
        roi_names: the RTSTRUCT's ROI names, the vocabulary's or TG-263's.
    """

    content_creator: str = CONTENT_CREATOR
    roi_names: RoiNames = RoiNames.VOCABULARY

    def __post_init__(self) -> None:
        creator_name(self.content_creator)


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose files (the first few) include a DICOM file.

    Files without the DICOM preamble count when they hold an image
    (:func:`core.dicom.files.read_header`). A folder with NIfTI files in it is not one:
    it is a batch of NIfTI inputs.
    """
    path = Path(path)
    if not path.is_dir() or any(has_nifti_ending(p) for p in path.iterdir()):
        return False
    files = (
        Path(root, name)
        for root, _, names in os.walk(path, followlinks=False)
        for name in sorted(names)
        if not Path(root, name).is_symlink()
    )
    return any(is_dicom_file(p) for p in islice(files, FILES_PROBED))


def reads_as_dicom(path: str | Path) -> bool:
    """Whether ``predict`` reads ``path`` as a DICOM series: a folder without NIfTI files.

    An empty folder, or one of files that are not DICOM, is read as a series too, so
    that the error says what the folder holds (``no files``, ``12 files, none DICOM``).
    """
    path = Path(path)
    return path.is_dir() and not any(has_nifti_ending(p) for p in path.iterdir())


def check_input(input_path: str | Path) -> None:
    """Refuse one DICOM file as input: the series is its folder.

    Raises:
        DataError: naming the file, for a DICOM file given instead of its folder.
    """
    path = Path(input_path)
    if path.is_file() and not has_nifti_ending(path) and is_dicom_file(path):
        raise DataError(path, "is one DICOM file; give the folder holding its series")


def check_format(output_format: OutputFormat, input_path: str | Path) -> None:
    """Refuse a DICOM output for an input that is not read as a DICOM series folder.

    Raises:
        DataError: naming the input, for ``seg`` or ``rtstruct`` with NIfTI input.
    """
    if output_format.needs_dicom and not reads_as_dicom(input_path):
        raise DataError(
            input_path,
            f"--format {output_format} needs a DICOM CT series folder as input "
            "(it references the source images); use --format nifti for NIfTI input",
        )


def write_dicom_labels(
    output_format: OutputFormat,
    path: str | Path,
    labels: NDArray[np.integer],
    structures: Sequence[str],
    sources: Sequence[pydicom.Dataset],
    version: str = "1",
    naming: DicomNaming | None = None,
) -> Path:
    """Write a label map on a series' grid as a DICOM SEG or RT Structure Set.

    Args:
        output_format: ``seg`` or ``rtstruct``.
        path: the ``.dcm`` file.
        labels: ``[column, row, slice]`` on the grid ``read_series`` gave.
        structures: label ``i + 1`` is ``structures[i]``.
        sources: the series' datasets from ``read_series``, in its order.
        version: the algorithm version recorded (e.g. the encoder's hash).
        naming: the SEG's content creator and the RTSTRUCT's ROI names (defaults:
            this software, the vocabulary's names).

    Raises:
        ValueError: for ``nifti``, or a label map that does not fit the series.
    """
    naming = naming or DicomNaming()
    if output_format is OutputFormat.SEG:
        return write_seg(
            path,
            labels,
            structures,
            sources,
            version=version,
            content_creator=naming.content_creator,
        )
    if output_format is OutputFormat.RTSTRUCT:
        return write_rtstruct(path, labels, structures, sources, roi_names=naming.roi_names)
    raise ValueError(f"{output_format} is not a DICOM output format")
