"""Small DICOM CT series for tests: a blob phantom, shuffled files, and broken series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from core.dicom.ct_writer import write_ct_series

SHAPE = (64, 64, 24)
STRUCTURES = ["liver", "spleen", "kidney_left", "kidney_right", "liver_tumor"]
# Scanner-like storage: x to the patient's left, y to the back (LPS), 0.8 x 0.8 x 2.5 mm.
LPS_AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 25.0], [0.0, -0.8, 0.0, 30.0], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1.0]]
)


def blob_labels(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Ellipsoids for STRUCTURES (ids 1..5), the tumour inside the liver."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)
    blobs = [  # centre (x, y, z), radii in voxels
        ((20, 30, 12), (14, 12, 8)),
        ((48, 22, 12), (8, 10, 6)),
        ((46, 46, 10), (6, 7, 5)),
        ((18, 50, 10), (6, 7, 5)),
        ((18, 28, 12), (4, 4, 3)),
    ]
    for value, (centre, radii) in enumerate(blobs, 1):
        inside = (
            sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii, strict=True)) <= 1.0
        )
        labels[inside] = value
    return labels


def phantom_ct(
    affine: np.ndarray = LPS_AFFINE, seed: int = 0
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A CT (int16 HU from -1024) of the blobs, and its label map."""
    labels = blob_labels()
    rng = np.random.default_rng(seed)
    hu = np.array([-1000, 60, 45, 30, 30, 90])[labels] + rng.integers(-20, 20, labels.shape)
    hu[0, 0, 0] = -1024  # the lowest value a scanner stores with intercept -1024
    return nib.Nifti1Image(hu.astype(np.int16), affine), labels


def write_shuffled_series(image: nib.Nifti1Image, folder: Path, seed: int = 0) -> list[Path]:
    """Write ``image`` as a CT series whose file names do not follow the slice order."""
    written = write_ct_series(image, folder, rescale_intercept=-1024.0)
    order = np.random.default_rng(seed).permutation(len(written))
    staged = [p.rename(p.with_name(f"tmp{i}")) for i, p in enumerate(written)]
    return [p.rename(p.with_name(f"IM{int(order[i]):05d}")) for i, p in enumerate(staged)]


def _edit(paths: list[Path], edit: object) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        edit(ds)  # type: ignore[operator]
        ds.save_as(path)


def tilt(paths: list[Path], degrees: float) -> None:
    """Shift every slice along its rows in proportion to its height (a tilted gantry)."""
    shear = np.tan(np.radians(degrees))

    def shift(ds: pydicom.Dataset) -> None:
        row_dir = np.asarray(ds.ImageOrientationPatient[:3], dtype=np.float64)
        position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        ds.ImagePositionPatient = (position + shear * position[2] * row_dir).tolist()

    _edit(paths, shift)


def set_position(path: Path, z_offset: float) -> None:
    """Move one slice along z."""

    def move(ds: pydicom.Dataset) -> None:
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + z_offset]

    _edit([path], move)


def slice_at(paths: list[Path], k: int) -> Path:
    """The file of the ``k``-th slice from the bottom."""
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))[k]


def _gdcm_transcode(path: Path, syntax: str) -> None:
    import gdcm  # python-gdcm: pydicom has no JPEG Lossless encoder

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change(), (path, syntax)
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


GDCM_ENCODED = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
"""JPEG Lossless (process 14, and its selection value 1): encoded with gdcm."""


def transcode(paths: list[Path], syntax: str) -> None:
    """Re-encode each file in a lossless compressed transfer syntax, in place."""
    for path in paths:
        if syntax in GDCM_ENCODED:
            _gdcm_transcode(path, syntax)
        else:  # RLE (pydicom), JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg)
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(path)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax


def strip_preamble(path: Path) -> None:
    """Drop the 128-byte preamble and the DICM prefix; the file meta group stays."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    path.write_bytes(data[132:])


def bare_dataset(path: Path) -> None:
    """Rewrite a file as its dataset alone: no preamble, no file meta, implicit VR."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x08\x00"
