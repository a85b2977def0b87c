"""Write a predicted label map as a DICOM RT Structure Set, and rasterise one back.

No well-kept library writes RT Structure Sets without pulling in a GUI build of OpenCV
(rt-utils) or a whole toolkit, so the structure set is assembled here with pydicom; the
contours follow the voxel edges, corner to corner, so that a contour's area is its
voxels' area (planning systems compute volumes from it) and filling it
(:func:`read_rtstruct`) gives back exactly the voxels it was traced from. They come from
scikit-image's marching squares at the 0.5 level on the mask upsampled twofold, whose
points lie on voxel edges a quarter voxel from a corner, snapped to that corner. Holes
are separate contours, combined by even-odd filling, as planning systems read them. ROIs
are named by the vocabulary or, on request, by AAPM TG-263 (``core.dicom.tg263``).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from scipy.ndimage import find_objects
from skimage.draw import polygon
from skimage.measure import find_contours

from core import anatomy
from core.dicom.codes import structure_code
from core.dicom.ct_writer import MANUFACTURER
from core.dicom.seg import ALGORITHM_NAME, present_labels
from core.dicom.tg263 import RoiNames, roi_name
from core.io import atomic_write_bytes
from core.label_files import structure_color
from core.vocabulary import Group

_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Patient and study attributes the structure set shares with its CT."""

STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
"""The SOP class RT structure sets conventionally use to reference a study."""


class _Plane:
    """Where a slice lies: pixel (row, column) <-> patient (LPS) coordinates."""

    def __init__(self, ds: pydicom.Dataset) -> None:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        self.row_dir, self.col_dir = orientation[:3], orientation[3:]
        self.normal = np.cross(self.row_dir, self.col_dir)
        self.origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        self.row_spacing, self.col_spacing = (float(v) for v in ds.PixelSpacing)

    def to_patient(self, row_col: NDArray[np.float64]) -> NDArray[np.float64]:
        rows, cols = row_col[:, :1], row_col[:, 1:]
        patient: NDArray[np.float64] = (
            self.origin
            + cols * self.col_spacing * self.row_dir
            + rows * self.row_spacing * self.col_dir
        )
        return patient

    def to_pixel(self, points: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        offset = points - self.origin
        return offset @ self.col_dir / self.row_spacing, offset @ self.row_dir / self.col_spacing


def _contours(mask: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """Closed contours (row, column) around a 2D mask on its voxels' edges, corners only.

    Voxel ``(r, c)`` covers ``[r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]``; every vertex is
    a voxel corner, so the outer contours' area less the holes' is the voxel count.
    """
    # Twofold upsampled, marching squares puts every point on a voxel edge a quarter
    # voxel from a corner (where it cuts the corner): the nearest corner is the one meant.
    fine = np.pad(np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1), 1).astype(np.float32)
    traced = []
    for contour in find_contours(fine, 0.5):
        points = np.floor((contour[:-1] - 1.5) / 2.0) + 0.5  # fine index -> corner
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        into = points - np.roll(points, 1, axis=0)
        out_of = np.roll(points, -1, axis=0) - points
        # Keep the corners only: on a straight run a point adds nothing but size.
        turning = np.abs(into[:, 0] * out_of[:, 1] - into[:, 1] * out_of[:, 0]) > 1e-9
        if turning.sum() >= 3:
            traced.append(points[turning])
    return traced


def _item(**attributes: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _code_item(code: Code) -> pydicom.Dataset:
    return _item(
        CodeValue=code.value,
        CodingSchemeDesignator=code.scheme_designator,
        CodeMeaning=code.meaning,
    )


def _interpreted_type(name: str) -> str:
    """EXTERNAL for the body outline, ORGAN for anatomy, none for a lesion.

    A predicted lesion is no clinician's GTV, so it gets no RT role.
    """
    if name == "body":
        return "EXTERNAL"
    return "" if anatomy.get(name).group is Group.LESION else "ORGAN"


def _roi_observation(number: int, name: str) -> pydicom.Dataset:
    code = structure_code(name)
    observation = _item(
        ObservationNumber=number,
        ReferencedROINumber=number,
        RTROIInterpretedType=_interpreted_type(name),
        ROIInterpreter="",
    )
    if code.coded:
        observation.RTROIIdentificationCodeSequence = [_code_item(code.type)]
    return observation


def write_rtstruct(
    path: str | Path,
    labels: NDArray[np.integer],
    structures: Sequence[str],
    sources: Sequence[pydicom.Dataset],
    *,
    label: str = "AUTOSEG",
    roi_names: RoiNames = RoiNames.VOCABULARY,
) -> Path:
    """Write an RT Structure Set with one ROI per structure present in ``labels``.

    Args:
        path: the ``.dcm`` file to write.
        labels: the label map ``[column, row, slice]`` on the sources' grid.
        structures: label ``i + 1`` is ``structures[i]``, vocabulary names.
        sources: the source CT datasets in slice order (from ``read_series``).
        label: StructureSetLabel (at most 16 characters).
        roi_names: ROI names from the vocabulary, or TG-263's where one has the same
            meaning (:mod:`core.dicom.tg263`).

    Returns:
        The path written.

    Raises:
        ValueError: see :func:`core.dicom.seg.present_labels`.
    """
    present = present_labels(path, labels, structures, sources)
    first = sources[0]
    now = datetime.datetime.now()
    images = [
        _item(ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID=ds.SOPInstanceUID)
        for ds in sources
    ]
    planes = [_Plane(ds) for ds in sources]
    boxes = find_objects(labels)  # each structure's bounding box: trace only inside it
    rois, contour_sets, observations = [], [], []
    for number, value in enumerate(present, 1):
        name = structures[value - 1]
        box_x, box_y, box_z = boxes[value - 1]
        corner = np.array([box_y.start, box_x.start], dtype=np.float64)  # (row, column)
        contours = []
        for k in range(box_z.start, box_z.stop):
            for traced in _contours(np.equal(labels[box_x, box_y, k].T, value)):
                points = np.round(planes[k].to_patient(traced + corner), 3)
                contours.append(
                    _item(
                        ContourImageSequence=[images[k]],
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(points),
                        ContourData=points.ravel().tolist(),
                    )
                )
        rois.append(
            _item(
                ROINumber=number,
                ReferencedFrameOfReferenceUID=first.FrameOfReferenceUID,
                ROIName=roi_name(name, roi_names),
                ROIGenerationAlgorithm="AUTOMATIC",
            )
        )
        contour_sets.append(
            _item(
                ROIDisplayColor=list(structure_color(name)),
                ReferencedROINumber=number,
                ContourSequence=contours,
            )
        )
        observations.append(_roi_observation(number, name))
    series_ref = _item(SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=images)
    study_ref = _item(
        ReferencedSOPClassUID=STUDY_COMPONENT_SOP_CLASS,
        ReferencedSOPInstanceUID=first.StudyInstanceUID,
        RTReferencedSeriesSequence=[series_ref],
    )
    ds = _item(
        SOPClassUID=RTStructureSetStorage,
        SOPInstanceUID=generate_uid(),
        SpecificCharacterSet="ISO_IR 192",
        Modality="RTSTRUCT",
        SeriesInstanceUID=generate_uid(),
        SeriesNumber=int(first.get("SeriesNumber", 0) or 0) + 2000,
        SeriesDescription="RT Structure Set",
        OperatorsName="",
        Manufacturer=MANUFACTURER,
        ManufacturerModelName=ALGORITHM_NAME,
        InstanceNumber=1,
        StructureSetLabel=label[:16],
        StructureSetDate=now.strftime("%Y%m%d"),
        StructureSetTime=now.strftime("%H%M%S"),
        ReferencedFrameOfReferenceSequence=[
            _item(
                FrameOfReferenceUID=first.FrameOfReferenceUID,
                RTReferencedStudySequence=[study_ref],
            )
        ],
        StructureSetROISequence=rois,
        ROIContourSequence=contour_sets,
        RTROIObservationsSequence=observations,
        ApprovalStatus="UNAPPROVED",
    )
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(path, buffer.getvalue())


def read_rtstruct(
    rtstruct: pydicom.Dataset, sources: Sequence[pydicom.Dataset]
) -> dict[str, NDArray[np.bool_]]:
    """Rasterise every ROI of a structure set onto its CT series' grid.

    Each contour lands on the slice nearest to it along the normal; contours on one slice
    combine by even-odd filling (a contour inside another is a hole).

    Args:
        rtstruct: the RT Structure Set.
        sources: the CT datasets in slice order (from ``read_series``).

    Returns:
        Per ROI name, a mask ``[column, row, slice]`` on the sources' grid.

    Raises:
        ValueError: if a contour lies off every slice of the series.
    """
    planes = [_Plane(ds) for ds in sources]
    heights = np.array([p.origin @ planes[0].normal for p in planes])
    shape = (int(sources[0].Rows), int(sources[0].Columns))
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    masks: dict[str, NDArray[np.bool_]] = {}
    for roi in rtstruct.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        mask = np.zeros((len(sources), *shape), dtype=bool)
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            distance = np.abs(heights - float(points.mean(axis=0) @ planes[0].normal))
            k = int(np.argmin(distance))
            if distance[k] > 0.5 * np.median(np.diff(heights)):
                raise ValueError(f"ROI {name}: a contour lies between the slices of the series")
            rows, cols = planes[k].to_pixel(points)
            rr, cc = polygon(rows, cols, shape)
            filled = np.zeros(shape, dtype=bool)
            filled[rr, cc] = True
            mask[k] ^= filled
        masks[name] = mask.transpose(2, 1, 0)
    return masks
