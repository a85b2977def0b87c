"""Write a NIfTI CT as a DICOM CT series: test data and demonstrations for DICOM sites.

The inverse of :func:`core.dicom.series.read_series`: voxel axis 0 runs along the image
rows (the column index), axis 1 down the columns, axis 2 from slice to slice; the affine
is turned from RAS to DICOM's LPS. Values are stored as whole numbers through the rescale
slope and intercept, as scanners do.
"""

from __future__ import annotations

import datetime
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.dicom.series import LPS_TO_RAS, MAX_SIDE
from core.io import atomic_write_bytes

MANUFACTURER = "continual-segment-fl"
"""The Manufacturer of every DICOM object this project writes."""


def _stored(
    hu: NDArray[np.floating], slope: float, intercept: float
) -> tuple[NDArray[np.integer], int]:
    """HU to stored values and the PixelRepresentation (0 unsigned, 1 signed)."""
    stored = np.rint((hu - intercept) / slope)
    if stored.min() >= 0 and stored.max() <= np.iinfo(np.uint16).max:
        return stored.astype(np.uint16), 0
    info = np.iinfo(np.int16)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("values do not fit 16 bits with this rescale slope and intercept")
    return stored.astype(np.int16), 1


def write_ct_series(
    image: nib.Nifti1Image,
    folder: str | Path,
    *,
    patient_id: str = "PHANTOM",
    series_description: str = "CT",
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a 3D CT (HU) as one DICOM CT series, a file per slice (``CT0001.dcm``, ...).

    Args:
        image: the CT; its affine may be in any orientation but without shear.
        folder: where the files go (created if missing).
        patient_id: PatientID and PatientName of the synthetic patient.
        series_description: SeriesDescription.
        rescale_intercept: RescaleIntercept; stored values are ``(HU - b) / m``, rounded.
        rescale_slope: RescaleSlope ``m``.
        study_uid: the StudyInstanceUID (a new one if none), to put series in one study.

    Returns:
        The files written, in slice order.

    Raises:
        ValueError: for an image that is not 3D, too large, sheared, or whose values do
            not fit 16 bits.
    """
    hu = np.asarray(image.dataobj, dtype=np.float64)
    if hu.ndim != 3 or max(hu.shape[:2]) > MAX_SIDE:
        raise ValueError(f"expected a 3D image with sides up to {MAX_SIDE}, got {hu.shape}")
    lps = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
    axes = lps[:3, :3]
    sides = np.linalg.norm(axes, axis=0)
    directions = axes / sides
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-6):
        raise ValueError("the image's axes are not orthogonal; DICOM slices cannot be sheared")
    stored, representation = _stored(hu, rescale_slope, rescale_intercept)
    now = datetime.datetime.now()
    common = {
        "SOPClassUID": CTImageStorage,
        "Modality": "CT",
        "PatientName": f"{patient_id}^",
        "PatientID": patient_id,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid or generate_uid(),
        "StudyDate": now.strftime("%Y%m%d"),
        "StudyTime": now.strftime("%H%M%S"),
        "StudyID": "1",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": 1,
        "SeriesDescription": series_description,
        "FrameOfReferenceUID": generate_uid(),
        "PositionReferenceIndicator": "",
        "Manufacturer": MANUFACTURER,
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "ImageOrientationPatient": [*directions[:, 0].tolist(), *directions[:, 1].tolist()],
        "PixelSpacing": [float(sides[1]), float(sides[0])],
        "SliceThickness": float(sides[2]),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": hu.shape[1],
        "Columns": hu.shape[0],
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": representation,
        "RescaleIntercept": rescale_intercept,
        "RescaleSlope": rescale_slope,
        "RescaleType": "HU",
    }
    folder = Path(folder)
    written = []
    for k in range(hu.shape[2]):
        ds = pydicom.Dataset()
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = (lps @ [0.0, 0.0, float(k), 1.0])[:3].tolist()
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        written.append(atomic_write_bytes(folder / f"CT{k + 1:04d}.dcm", buffer.getvalue()))
    return written
