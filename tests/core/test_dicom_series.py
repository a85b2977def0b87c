from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from core.dicom.ct_writer import write_ct_series
from core.dicom.output import is_dicom_folder
from core.dicom.rtstruct import write_rtstruct
from core.dicom.seg import write_seg
from core.dicom.series import DicomSeriesError, read_series
from tests.builders_dicom import (
    LPS_AFFINE,
    STRUCTURES,
    bare_dataset,
    phantom_ct,
    set_position,
    slice_at,
    strip_preamble,
    tilt,
    transcode,
    write_shuffled_series,
)

FLIPPED_Z = LPS_AFFINE @ np.diag([1.0, 1.0, -1.0, 1.0])  # slices stored head to feet
OBLIQUE = np.array(  # rotated 20 degrees about z, RAS storage
    [
        [0.8 * np.cos(0.35), -0.8 * np.sin(0.35), 0.0, 5.0],
        [0.8 * np.sin(0.35), 0.8 * np.cos(0.35), 0.0, -3.0],
        [0.0, 0.0, 2.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def canonical(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    ras = nib.as_closest_canonical(image)
    return np.asarray(ras.dataobj), ras.affine


@pytest.mark.parametrize("affine", [LPS_AFFINE, FLIPPED_Z, OBLIQUE], ids=["lps", "flip", "oblique"])
def test_series_reads_back_as_its_nifti_twin(tmp_path: Path, affine: np.ndarray) -> None:
    twin, _ = phantom_ct(affine)
    write_shuffled_series(twin, tmp_path / "ct")
    image, datasets = read_series(tmp_path / "ct")
    assert image.get_data_dtype() == np.int16
    want_data, want_affine = canonical(twin)
    got_data, got_affine = canonical(image)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)
    np.testing.assert_array_equal(got_data, want_data)
    # The datasets come in slice order along the normal, headers only.
    heights = [float(np.asarray(ds.ImagePositionPatient) @ image.affine[:3, 2]) for ds in datasets]
    assert heights == sorted(heights) and "PixelData" not in datasets[0]
    assert float(datasets[0].RescaleIntercept) == -1024.0


def test_dicom_is_lps_and_the_image_is_ras(tmp_path: Path) -> None:
    twin, _ = phantom_ct(LPS_AFFINE)
    write_ct_series(twin, tmp_path)
    image, datasets = read_series(tmp_path)
    # The first voxel of the first slice lies at that slice's ImagePositionPatient (LPS).
    x, y, z = (float(v) for v in datasets[0].ImagePositionPatient)
    np.testing.assert_allclose(image.affine[:3, 3], [-x, -y, z])
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_non_integer_rescale_gives_float32(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    write_ct_series(twin, tmp_path, rescale_slope=0.5, rescale_intercept=-1024.25)
    image, _ = read_series(tmp_path)
    assert image.get_data_dtype() == np.float32
    # Stored rint((hu - b) / m), read back m * stored + b: within m / 2 of the HU.
    assert np.abs(np.asarray(image.dataobj) - np.asarray(twin.dataobj)).max() <= 0.25 + 1e-4


def test_choose_among_series_by_uid(tmp_path: Path) -> None:
    first, _ = phantom_ct(seed=1)
    second, _ = phantom_ct(seed=2)
    write_ct_series(first, tmp_path / "a", series_description="arterial")
    write_ct_series(second, tmp_path / "b", series_description="venous")
    with pytest.raises(DicomSeriesError) as e:
        read_series(tmp_path)
    message = str(e.value)
    assert message.startswith(str(tmp_path)) and "2 CT series" in message
    assert "arterial, 24 slices" in message and "venous, 24 slices" in message
    uid = pydicom.dcmread(tmp_path / "b" / "CT0001.dcm").SeriesInstanceUID
    image, datasets = read_series(tmp_path, series_uid=uid)
    assert {ds.SeriesInstanceUID for ds in datasets} == {uid}
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(second.dataobj))
    with pytest.raises(DicomSeriesError, match=r"no CT series 1\.2\.3; found: "):
        read_series(tmp_path, series_uid="1.2.3")


def test_folder_of_non_ct_objects_is_refused(tmp_path: Path) -> None:
    twin, labels = phantom_ct()
    write_ct_series(twin, tmp_path / "ct")
    _, datasets = read_series(tmp_path / "ct")
    write_seg(tmp_path / "objects" / "seg.dcm", labels, STRUCTURES, datasets)
    write_rtstruct(tmp_path / "objects" / "rt.dcm", labels, STRUCTURES, datasets)
    (tmp_path / "objects" / "notes.txt").write_text("not DICOM")
    with pytest.raises(DicomSeriesError) as e:
        read_series(tmp_path / "objects")
    assert str(e.value) == (
        f"{tmp_path / 'objects'}: no CT image series (found 1 RTSTRUCT, 1 SEG; 1 file not DICOM)"
    )


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_shuffled_series(twin, tmp_path)
    slice_at(paths, 10).unlink()
    with pytest.raises(DicomSeriesError, match=r"missing slice: a gap of 5\.00 mm .* 2\.50 mm"):
        read_series(tmp_path)


def test_non_uniform_spacing_is_refused(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    set_position(slice_at(paths, 10), 0.7)
    with pytest.raises(DicomSeriesError, match=r"non-uniform slice spacing \(1\.80 to 3\.20 mm\)"):
        read_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    tilt(paths, 15.0)
    with pytest.raises(DicomSeriesError, match=r"stacked 15\.00 degrees off .*gantry tilt"):
        read_series(tmp_path)


def test_two_different_slices_at_one_position_are_refused(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path / "dup")
    set_position(slice_at(paths, 3), 2.5)
    with pytest.raises(DicomSeriesError, match="two slices at the same position"):
        read_series(tmp_path / "dup")
    with pytest.raises(DicomSeriesError, match="expected a folder of DICOM CT files"):
        read_series(tmp_path / "dup" / "CT0001.dcm")


def test_truncated_file_is_named(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    paths[5].write_bytes(paths[5].read_bytes()[:-100])  # an interrupted copy
    with pytest.raises(DicomSeriesError, match=r"CT0006\.dcm: cannot decode the pixels"):
        read_series(tmp_path)


def test_a_localizer_in_the_series_is_skipped(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    scout = pydicom.dcmread(paths[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal scout
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.save_as(tmp_path / "scout.dcm")
    image, datasets = read_series(tmp_path)
    assert image.shape == (64, 64, 24) and scout.SOPInstanceUID not in {
        ds.SOPInstanceUID for ds in datasets
    }


@pytest.mark.parametrize(
    "syntax", [JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless]
)
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned16", "signed12"])
def test_compressed_series_read_as_the_uncompressed(
    tmp_path: Path, syntax: str, signed: bool
) -> None:
    twin, _ = phantom_ct()
    # Unsigned 16-bit storage (intercept -1024), or signed 12-bit as many scanners store.
    paths = write_ct_series(twin, tmp_path, rescale_intercept=0.0 if signed else -1024.0)
    if signed:
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.BitsStored, ds.HighBit = 12, 11
            ds.save_as(path)
    transcode(paths, syntax)
    image, datasets = read_series(tmp_path)
    assert datasets[0].file_meta.TransferSyntaxUID == syntax
    assert int(datasets[0].PixelRepresentation) == int(signed)
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(twin.dataobj))


def test_an_undecodable_syntax_names_the_file_and_the_cure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path / "jpeg")
    transcode(paths, JPEGLosslessSV1)
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})  # gdcm missing
    with pytest.raises(DicomSeriesError) as e:
        read_series(tmp_path / "jpeg")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'jpeg'}: CT0001.dcm: pixels in JPEG Lossless")
    assert "(1.2.840.10008.1.2.4.70)" in message and "install python-gdcm" in message
    # A syntax no installed package decodes (video here) is named, with what to send.
    paths = write_ct_series(twin, tmp_path / "video")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.save_as(path)
    with pytest.raises(DicomSeriesError, match=r"CT0001\.dcm: pixels in transfer syntax MPEG2"):
        read_series(tmp_path / "video")


def test_files_without_the_preamble_are_read(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    for path in paths[::2]:
        strip_preamble(path)  # file meta without the preamble and DICM
    for path in paths[1::2]:
        bare_dataset(path)  # no file meta either
    assert is_dicom_folder(tmp_path)
    image, datasets = read_series(tmp_path)
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(twin.dataobj))
    assert len(datasets) == len(paths)


def test_empty_and_non_dicom_folders_say_what_they_hold(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError) as e:
        read_series(tmp_path / "empty")
    assert str(e.value) == f"{tmp_path / 'empty'}: no files; expected a DICOM CT series"
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("notes")
    (other / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    # Bytes that start like a bare dataset (group 0008) but are none: force=True alone
    # would accept them.
    (other / "c.raw").write_bytes(b"\x08\x00\x16\x00" + b"garbage " * 64)
    with pytest.raises(DicomSeriesError) as e:
        read_series(other)
    assert str(e.value) == (
        f"{other}: 3 files, none DICOM (e.g. a.txt); expected a DICOM CT series"
    )
    assert not is_dicom_folder(other)


def test_a_slice_sent_twice_is_read_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path / "ct")
    shutil.copy(paths[3], tmp_path / "ct" / "copy_of_4.dcm")  # same SOPInstanceUID
    again = pydicom.dcmread(paths[7])  # re-exported: a new UID, the same image
    again.SOPInstanceUID = pydicom.uid.generate_uid()
    again.save_as(tmp_path / "ct" / "export_of_8.dcm")
    with caplog.at_level(logging.WARNING, logger="core.dicom.series"):
        image, datasets = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(twin.dataobj))
    assert len(datasets) == len(paths) == len({ds.SOPInstanceUID for ds in datasets})
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{tmp_path / 'ct'}: 2 duplicate files skipped")
    assert "copy_of_4.dcm is CT0004.dcm" in warning


def test_one_uid_on_two_different_images_is_refused(tmp_path: Path) -> None:
    twin, _ = phantom_ct()
    paths = write_ct_series(twin, tmp_path)
    other = pydicom.dcmread(paths[5])
    other.SOPInstanceUID = pydicom.dcmread(paths[4]).SOPInstanceUID
    other.save_as(paths[5])
    with pytest.raises(DicomSeriesError, match=r"CT0006\.dcm and CT0005\.dcm: one SOPInstanceUID"):
        read_series(tmp_path)
    # One position, different pixels: both files are named.
    paths = write_ct_series(twin, tmp_path / "b")
    changed = pydicom.dcmread(paths[2])
    changed.SOPInstanceUID = pydicom.uid.generate_uid()
    changed.PixelData = bytes(len(changed.PixelData))
    changed.save_as(tmp_path / "b" / "z.dcm")
    with pytest.raises(
        DicomSeriesError, match=r"z\.dcm: two slices at the same position \(CT0003\.dcm holds"
    ):
        read_series(tmp_path / "b")
