from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from core.data.problems import DataError
from core.dicom.codes import SCT_KEYWORDS, structure_code
from core.dicom.ct_writer import write_ct_series
from core.dicom.output import (
    DicomNaming,
    OutputFormat,
    check_format,
    check_input,
    is_dicom_folder,
    write_dicom_labels,
)
from core.dicom.rtstruct import read_rtstruct, write_rtstruct
from core.dicom.seg import CONTENT_CREATOR, write_seg
from core.dicom.series import read_series
from core.dicom.tg263 import TG263, RoiNames
from core.vocabulary import STRUCTURES as STRUCTURES_TABLE
from tests.builders_dicom import STRUCTURES, phantom_ct, write_shuffled_series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """The blob phantom as a shuffled DICOM series: its label map on the read grid."""
    folder = tmp_path_factory.mktemp("ct")
    twin, labels = phantom_ct()
    write_shuffled_series(twin, folder)
    image, datasets = read_series(folder)
    # The twin is stored like the series (LPS rows, slices upwards): same grid.
    np.testing.assert_allclose(image.affine, twin.affine, atol=1e-6)
    return labels, datasets


def test_seg_holds_each_present_structure_exactly(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    structures = [*STRUCTURES, "brain"]  # brain is absent: no segment for it
    path = write_seg(tmp_path / "seg.dcm", labels, structures, datasets, version="abc123")
    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG" and seg.SeriesInstanceUID != datasets[0].SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    described = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [str(s.SegmentLabel) for s in described.values()] == STRUCTURES
    uids = [ds.SOPInstanceUID for ds in datasets]
    for number, segment in described.items():
        frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0]
        want = labels == STRUCTURES.index(str(segment.SegmentLabel)) + 1
        np.testing.assert_array_equal(frames.transpose(2, 1, 0).astype(bool), want)
    kidney = described[3].SegmentedPropertyTypeCodeSequence[0]
    assert (kidney.CodeValue, kidney.CodingSchemeDesignator) == (codes.SCT.Kidney.value, "SCT")
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == codes.SCT.Left.value
    tumour = described[5]
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value
    assert tumour.AnatomicRegionSequence[0].CodeValue == codes.SCT.Liver.value
    algorithm = described[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "abc123"


def test_rtstruct_contours_rasterise_to_the_label_map(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    path = write_rtstruct(tmp_path / "rt.dcm", labels, STRUCTURES, datasets)
    rt = pydicom.dcmread(path)
    assert rt.Modality == "RTSTRUCT" and rt.PatientID == datasets[0].PatientID
    study = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    masks = read_rtstruct(rt, datasets)
    assert list(masks) == STRUCTURES
    for value, name in enumerate(STRUCTURES, 1):
        # The liver has a hole where the tumour is: an inner contour, filled even-odd.
        np.testing.assert_array_equal(masks[name], labels == value, err_msg=name)
    codes_by_roi = {
        int(o.ReferencedROINumber): o.RTROIIdentificationCodeSequence[0].CodeValue
        for o in rt.RTROIObservationsSequence
    }
    assert codes_by_roi[1] == codes.SCT.Liver.value
    roles = [str(o.RTROIInterpretedType) for o in rt.RTROIObservationsSequence]
    assert roles == ["ORGAN"] * 4 + [""]  # a predicted tumour is no clinician's GTV


def test_output_refuses_a_label_map_off_the_series_grid(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    with pytest.raises(ValueError, match=r"seg\.dcm: label map of shape \(64, 64, 23\)"):
        write_seg(tmp_path / "seg.dcm", labels[:, :, 1:], STRUCTURES, datasets)
    with pytest.raises(ValueError, match=r"rt\.dcm: no structure was found"):
        write_rtstruct(tmp_path / "rt.dcm", np.zeros_like(labels), STRUCTURES, datasets)
    with pytest.raises(ValueError, match="exceed the 2 structures"):
        write_seg(tmp_path / "seg.dcm", labels, STRUCTURES[:2], datasets)
    assert not list(tmp_path.iterdir())


def test_code_table_names_real_concepts_and_falls_back_to_the_category() -> None:
    vocabulary = {s.name for s in STRUCTURES_TABLE}
    for name, keyword in SCT_KEYWORDS.items():
        assert getattr(codes.SCT, keyword).scheme_designator == "SCT", name
        assert name in vocabulary or f"{name}_left" in vocabulary, name
    right_eye = structure_code("eye_right")
    assert (right_eye.type, right_eye.modifier) == (codes.SCT.Eye, codes.SCT.Right)
    rib = structure_code("rib_left_3")
    assert (rib.type, rib.category, rib.coded) == (codes.SCT.AnatomicalStructure,) * 2 + (False,)
    assert structure_code("body").category == codes.SCT.Tissue


def test_dicom_formats_need_a_dicom_series_input(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    (tmp_path / "batch").mkdir()
    nib.save(twin, tmp_path / "batch" / "ct.nii.gz")
    write_ct_series(twin, tmp_path / "series")
    for nifti_input in (tmp_path / "batch" / "ct.nii.gz", tmp_path / "batch"):
        assert not is_dicom_folder(nifti_input)
        with pytest.raises(DataError, match=r"--format seg needs a DICOM CT series folder"):
            check_format(OutputFormat.SEG, nifti_input)
        check_format(OutputFormat.NIFTI, nifti_input)
    assert is_dicom_folder(tmp_path / "series")
    check_format(OutputFormat.RTSTRUCT, tmp_path / "series")


def test_write_dicom_labels_writes_the_format_asked(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    for output_format, sop_class in [
        (OutputFormat.SEG, SegmentationStorage),
        (OutputFormat.RTSTRUCT, RTStructureSetStorage),
    ]:
        path = write_dicom_labels(
            output_format, tmp_path / f"{output_format}.dcm", labels, STRUCTURES, datasets
        )
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == sop_class
    with pytest.raises(ValueError, match="nifti is not a DICOM output format"):
        write_dicom_labels(OutputFormat.NIFTI, tmp_path / "x.dcm", labels, STRUCTURES, datasets)


SEG_TYPE_2 = (  # type 2 attributes of the SEG IOD's modules: present, maybe empty
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstanceNumber",
    "ContentDescription",
    "ContentCreatorName",
)


def test_seg_names_its_content_creator(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    seg = pydicom.dcmread(write_seg(tmp_path / "a.dcm", labels, STRUCTURES, datasets))
    assert [k for k in SEG_TYPE_2 if k not in seg] == []
    assert str(seg.ContentCreatorName) == CONTENT_CREATOR == "csfl^continual-segment-fl"
    assert seg.ContentLabel == "AUTOSEG" and "continual-segment-fl" in seg.ContentDescription
    path = write_dicom_labels(
        OutputFormat.SEG,
        tmp_path / "b.dcm",
        labels,
        STRUCTURES,
        datasets,
        naming=DicomNaming(content_creator="Doe^Jane"),
    )
    creator = hd.seg.segread(path).ContentCreatorName
    assert (creator.family_name, creator.given_name) == ("Doe", "Jane")
    for bad in ("", "Doe\\Jane", "x" * 65):
        with pytest.raises(ValueError, match="content creator"):
            DicomNaming(content_creator=bad)


def _plane_area(points: np.ndarray, ds: pydicom.Dataset) -> float:
    """Signed area (mm^2) of a contour in its slice's plane (shoelace)."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    u, v = (points - points[0]) @ orientation[:3], (points - points[0]) @ orientation[3:]
    return 0.5 * float(np.dot(u, np.roll(v, -1)) - np.dot(v, np.roll(u, -1)))


def test_rtstruct_contours_enclose_their_voxels_area(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    blobs, datasets = series
    labels = np.zeros_like(blobs)
    labels[10, 10, 3] = 1  # one voxel
    labels[20:22, 30:32, 4] = 2  # 2 x 2
    labels[40:43, 40:44, 5] = 3  # 3 x 4
    labels[50, 50, 6] = labels[51, 51, 6] = 3  # touching at a corner only
    labels[:, :, 12:] = blobs[:, :, 12:]  # and the blobs, with the tumour's hole
    rt = pydicom.dcmread(write_rtstruct(tmp_path / "rt.dcm", labels, STRUCTURES, datasets))
    pixel = float(np.prod(np.asarray(datasets[0].PixelSpacing, dtype=np.float64)))
    uids = [ds.SOPInstanceUID for ds in datasets]
    for value, roi in enumerate(rt.ROIContourSequence, 1):
        area = np.zeros(len(datasets))
        for contour in roi.ContourSequence:
            k = uids.index(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            area[k] += _plane_area(points, datasets[k])  # holes run the other way round
        voxels = (labels == value).sum(axis=(0, 1)) * pixel
        np.testing.assert_allclose(np.abs(area), voxels, rtol=1e-6, atol=1e-6)
    masks = read_rtstruct(rt, datasets)
    for value, name in enumerate(STRUCTURES, 1):
        np.testing.assert_array_equal(masks[name], labels == value, err_msg=name)


def test_rtstruct_roi_names_can_be_tg263(
    tmp_path: Path, series: tuple[np.ndarray, list[pydicom.Dataset]]
) -> None:
    labels, datasets = series
    path = write_dicom_labels(
        OutputFormat.RTSTRUCT,
        tmp_path / "rt.dcm",
        labels,
        STRUCTURES,
        datasets,
        naming=DicomNaming(roi_names=RoiNames.TG263),
    )
    rt = pydicom.dcmread(path)
    names = [str(r.ROIName) for r in rt.StructureSetROISequence]
    assert names == ["Liver", "Spleen", "Kidney_L", "Kidney_R", "liver_tumor"]
    assert list(read_rtstruct(rt, datasets)) == names


def test_tg263_table_names_vocabulary_structures_once() -> None:
    vocabulary = {s.name for s in STRUCTURES_TABLE}
    assert set(TG263) <= vocabulary
    assert len(set(TG263.values())) == len(TG263)
    assert all(len(name) <= 16 and " " not in name for name in TG263.values())
    assert TG263["spinal_cord"] == "SpinalCord" and TG263["urinary_bladder"] == "Bladder"
    assert TG263["rib_left_1"] == "Rib01_L" and TG263["femur_right"] == "Femur_R"
    # Different meanings keep their own names: the hip bone is no femoral head.
    assert "hip_left" not in TG263 and "vertebra_L3" not in TG263


def test_one_dicom_file_is_not_a_series(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    with pytest.raises(DataError, match=r"CT0001\.dcm: is one DICOM file; give the folder"):
        check_input(paths[0])
    check_input(tmp_path)
