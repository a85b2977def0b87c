"""Predicting a DICOM CT series: read it, segment it, write NIfTI, DICOM SEG or RTSTRUCT.

The series is read into a NIfTI image on its own voxel grid (``core.dicom.series``), so
the label map comes back on the grid of the source slices and the DICOM writers can refer
to them; the label tables are written beside the output as for NIfTI input. The image
passes through a temporary NIfTI file; warnings and errors name the user's folder instead.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import torch

from core.bundle import Bundle
from core.data.nifti import has_nifti_ending, strip_nifti_ending, write_volume
from core.data.problems import DataError
from core.device import DEFAULT_PRECISION
from core.dicom.output import DicomNaming, OutputFormat, write_dicom_labels
from core.dicom.series import read_series
from core.inference import predict_volume, structure_sources
from core.label_files import write_label_tables
from core.merge import MergeSettings

DICOM_ENDING = ".dcm"


def output_for(output: Path, output_format: OutputFormat) -> Path:
    """Check that an output path suits the format (``.nii.gz``/``.nii`` or ``.dcm``).

    Raises:
        DataError: naming the output and the ending expected.
    """
    if output_format is OutputFormat.NIFTI and not has_nifti_ending(output):
        raise DataError(output, "the output of one input must end in .nii.gz or .nii")
    if output_format.needs_dicom and output.suffix.lower() != DICOM_ENDING:
        raise DataError(output, f"--format {output_format} writes one DICOM file: end it in .dcm")
    return output


@contextmanager
def named_as(temporary: Path, folder: Path) -> Iterator[None]:
    """Within the block, log records and errors that name ``temporary`` name ``folder``.

    Args:
        temporary: the temporary file (or folder) the work reads.
        folder: what the user gave, to be named instead.

    Raises:
        DataError: the block's, naming ``folder`` where it named ``temporary``.
    """
    old = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to logging
            return record
        if str(temporary) in message:
            record.msg, record.args = message.replace(str(temporary), str(folder)), ()
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    except DataError as e:
        path = folder if e.path == temporary else e.path
        raise DataError(path, e.message.replace(str(temporary), str(folder))) from e
    finally:
        logging.setLogRecordFactory(old)


def predict_series(
    bundle: Bundle,
    folder: Path,
    output: Path,
    output_format: OutputFormat,
    series_uid: str | None = None,
    device: torch.device | None = None,
    overlap: float = 0.25,
    settings: MergeSettings | None = None,
    naming: DicomNaming | None = None,
    precision: str = DEFAULT_PRECISION,
) -> list[Path]:
    """Segment one CT series of ``folder`` and write ``output`` and its label tables.

    Warnings and errors name ``folder``, never the temporary NIfTI the image passes
    through.

    Raises:
        DataError: for a folder without exactly one CT series to read (or an unknown
            ``series_uid``), a bad output name, or a series that cannot be predicted.
    """
    output_for(output, output_format)
    settings = settings or bundle.merge
    image, sources = read_series(folder, series_uid)
    with tempfile.TemporaryDirectory(prefix="csfl-series-") as tmp:
        path = Path(tmp) / "series.nii.gz"
        nib.save(image, path)
        with named_as(path, folder):
            prediction = predict_volume(
                bundle, path, device, overlap=overlap, settings=settings, precision=precision
            )
    if output_format is OutputFormat.NIFTI:
        written = write_volume(output, prediction.labels, prediction.affine)
        prefix = output.with_name(strip_nifti_ending(output.name))
    else:
        version = bundle.model.encoder.weights_sha256()[:16]
        written = write_dicom_labels(
            output_format,
            output,
            prediction.labels,
            prediction.structures,
            sources,
            version,
            naming,
        )
        prefix = output.with_suffix("")
    decoders = structure_sources(bundle.model)
    tables = write_label_tables(
        prefix, prediction.structures, decoders, {"merge": settings.to_json()}
    )
    return [written, *tables]
