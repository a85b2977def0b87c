"""Hostile NIfTI files for tests: headers that lie about their size, gzip bombs."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.builders import AFFINE

HEADER_BYTES = 352  # NIfTI-1 header and the 4-byte extension flag


def header_bytes(shape: tuple[int, ...], dtype: type = np.int16) -> bytes:
    """A valid NIfTI-1 header declaring ``shape`` and ``dtype``, voxels at byte 352."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=1)
    hdr["vox_offset"] = HEADER_BYTES
    return hdr.binaryblock + b"\0" * 4


def _gzip(chunks: list[bytes], zeros: int) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip container
    out = [packer.compress(c) for c in chunks]
    block = bytes(2**20)
    while zeros > 0:
        out.append(packer.compress(block[: min(zeros, len(block))]))
        zeros -= len(block)
    out.append(packer.flush())
    return b"".join(out)


def header_only(path: Path, shape: tuple[int, ...], dtype: type = np.int16) -> Path:
    """A file that declares ``shape`` but holds no voxel at all (gzip if ``.gz``)."""
    raw = header_bytes(shape, dtype)
    path.write_bytes(_gzip([raw], 0) if path.name.endswith(".gz") else raw)
    return path


def gzip_bomb(path: Path, shape: tuple[int, ...], inflated_bytes: int) -> Path:
    """A small ``.nii.gz`` declaring ``shape`` whose stream inflates to ``inflated_bytes``."""
    path.write_bytes(_gzip([header_bytes(shape)], inflated_bytes))
    return path
