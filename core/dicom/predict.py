"""Predicting a DICOM CT series: read it, segment it, write NIfTI, DICOM SEG or RTSTRUCT.

The series is read into a NIfTI image on its own voxel grid (``core.dicom.series``), so
the label map comes back on the grid of the source slices and the DICOM writers can refer
to them; the label tables are written beside the output as for NIfTI input.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import torch

from core.bundle import Bundle
from core.data.nifti import has_nifti_ending, strip_nifti_ending, write_volume
from core.data.problems import DataError
from core.dicom.output import OutputFormat, write_dicom_labels
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


def predict_series(
    bundle: Bundle,
    folder: Path,
    output: Path,
    output_format: OutputFormat,
    series_uid: str | None = None,
    device: torch.device | None = None,
    overlap: float = 0.25,
    settings: MergeSettings | None = None,
) -> list[Path]:
    """Segment one CT series of ``folder`` and write ``output`` and its label tables.

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
        prediction = predict_volume(bundle, path, device, overlap=overlap, settings=settings)
    if output_format is OutputFormat.NIFTI:
        written = write_volume(output, prediction.labels, prediction.affine)
        prefix = output.with_name(strip_nifti_ending(output.name))
    else:
        version = bundle.model.encoder.weights_sha256()[:16]
        written = write_dicom_labels(
            output_format, output, prediction.labels, prediction.structures, sources, version
        )
        prefix = output.with_suffix("")
    decoders = structure_sources(bundle.model)
    tables = write_label_tables(
        prefix, prediction.structures, decoders, {"merge": settings.to_json()}
    )
    return [written, *tables]
