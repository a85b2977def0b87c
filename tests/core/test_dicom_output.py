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
from core.dicom.output import OutputFormat, check_format, is_dicom_folder, write_dicom_labels
from core.dicom.rtstruct import read_rtstruct, write_rtstruct
from core.dicom.seg import write_seg
from core.dicom.series import read_series
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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


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
        assert dice(masks[name], labels == value) >= 0.95, name
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
