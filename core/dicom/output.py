"""Which output a prediction gets, and whether an input is a DICOM series folder.

A NIfTI label map suits any input; a DICOM Segmentation or RT Structure Set needs the
source CT series it refers to, so those formats need a DICOM input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from itertools import islice
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.misc import is_dicom

from core.data.nifti import has_nifti_ending
from core.data.problems import DataError
from core.dicom.rtstruct import write_rtstruct
from core.dicom.seg import write_seg

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


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose files (the first few) include a DICOM file.

    A folder with NIfTI files in it is not one: it is a batch of NIfTI inputs.
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
    return any(is_dicom(p) for p in islice(files, FILES_PROBED))


def check_format(output_format: OutputFormat, input_path: str | Path) -> None:
    """Refuse a DICOM output for an input that is not a DICOM series folder.

    Raises:
        DataError: naming the input, for ``seg`` or ``rtstruct`` without a DICOM input.
    """
    if output_format.needs_dicom and not is_dicom_folder(input_path):
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
) -> Path:
    """Write a label map on a series' grid as a DICOM SEG or RT Structure Set.

    Args:
        output_format: ``seg`` or ``rtstruct``.
        path: the ``.dcm`` file.
        labels: ``[column, row, slice]`` on the grid ``read_series`` gave.
        structures: label ``i + 1`` is ``structures[i]``.
        sources: the series' datasets from ``read_series``, in its order.
        version: the algorithm version recorded (e.g. the encoder's hash).

    Raises:
        ValueError: for ``nifti``, or a label map that does not fit the series.
    """
    if output_format is OutputFormat.SEG:
        return write_seg(path, labels, structures, sources, version=version)
    if output_format is OutputFormat.RTSTRUCT:
        return write_rtstruct(path, labels, structures, sources)
    raise ValueError(f"{output_format} is not a DICOM output format")
