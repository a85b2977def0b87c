"""Small on-disk datasets in each layout, for tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from core.data import CaseArrays, TaskDataset, write_nnunet
from core.data.nifti import nifti_bytes, write_volume

SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def case_arrays(case_id: str, seed: int, n_labels: int = 2) -> CaseArrays:
    """An int16 HU image and a label map with ``n_labels`` cubes (ids 1..n_labels)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, dtype=np.uint8)
    for i in range(1, n_labels + 1):
        lo = 2 + 4 * (i - 1)
        label[lo : lo + 3, lo : lo + 3, 4:10] = i
    return CaseArrays(case_id, image, label, AFFINE)


def nnunet_dataset(
    root: Path, n_cases: int = 3, structures: tuple[str, ...] = ("liver", "spleen")
) -> TaskDataset:
    """A valid nnU-Net v2 raw dataset."""
    cases = [case_arrays(f"case_{i:03d}", i, len(structures)) for i in range(n_cases)]
    return write_nnunet(root, structures, cases)


def msd_dataset(root: Path, labels: dict[str, str], n_cases: int = 2) -> Path:
    """A Medical Segmentation Decathlon task folder with the given id -> name table."""
    training = []
    for i in range(n_cases):
        arrays = case_arrays(f"x_{i}", i, len(labels) - 1)
        write_volume(root / "imagesTr" / f"x_{i}.nii.gz", arrays.image, AFFINE)
        write_volume(root / "labelsTr" / f"x_{i}.nii.gz", arrays.label, AFFINE)
        training.append({"image": f"./imagesTr/x_{i}.nii.gz", "label": f"./labelsTr/x_{i}.nii.gz"})
    meta = {
        "name": root.name,
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": n_cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def totalseg_case(root: Path, case_id: str, masks: dict[str, np.ndarray], seed: int = 0) -> Path:
    """One TotalSegmentator-layout case folder: ct.nii.gz + segmentations/<name>.nii.gz."""
    image = np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)
    write_volume(root / case_id / "ct.nii.gz", image, AFFINE)
    for name, mask in masks.items():
        write_volume(root / case_id / "segmentations" / f"{name}.nii.gz", mask, AFFINE)
    return root / case_id


def write_raw(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Write a NIfTI of any dimensionality (our writer refuses non-3D arrays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(array, affine, gz=path.name.endswith(".gz")))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file short, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def gzip_garbage(path: Path) -> Path:
    """A valid gzip stream that does not hold a NIfTI."""
    path.write_bytes(gzip.compress(b"this is not a nifti file" * 40))
    return path
