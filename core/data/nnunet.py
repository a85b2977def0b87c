"""nnU-Net v2 raw layout: ``dataset.json`` + ``imagesTr/<case>_0000<ending>`` + ``labelsTr``.

Reading follows nnU-Net v2's conventions (``channel_names``, ``labels`` name -> id,
``file_ending``, ``numTraining``); only a single CT channel and NIfTI files are accepted.
Writing produces the same layout, and is what phantoms and conversions use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core import anatomy
from core.data.dataset import Case, LabelTable, Layout, TaskDataset
from core.data.dataset_json import load_dataset_json, single_ct_channel
from core.data.nifti import NIFTI_ENDINGS, write_volume
from core.data.problems import DataError, Problem, Severity
from core.io import atomic_write_json

CHANNEL_SUFFIX = "_0000"


def _label_table(path: Path, labels: dict[str, Any], context: str) -> LabelTable:
    names_by_id: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, list):
            raise DataError(path, f"labels: {name!r} is region-based ({value}); expected one id")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(path, f"labels: {name!r} has id {value!r}; expected an integer")
        if name == "ignore":
            raise DataError(path, "labels: nnU-Net's 'ignore' label is not supported")
        if value == 0:
            continue
        if value in names_by_id:
            raise DataError(path, f"labels: id {value} used by {names_by_id[value]!r} and {name!r}")
        names_by_id[value] = name
    if 0 not in labels.values():
        raise DataError(path, "labels: expected 'background': 0")
    return LabelTable.from_names(names_by_id, context=context, source=path)


def read_nnunet(root: str | Path) -> TaskDataset:
    """Read an nnU-Net v2 raw dataset folder.

    Cases whose files are missing are left out and listed in ``problems``.

    Raises:
        DataError: for a missing or malformed ``dataset.json`` or no usable case.
    """
    root = Path(root)
    path = root / "dataset.json"
    meta = load_dataset_json(path, {"channel_names": dict, "labels": dict, "file_ending": str})
    problems: list[Problem] = []
    if warning := single_ct_channel(path, "channel_names", meta["channel_names"]):
        problems.append(Problem(path, warning, Severity.WARNING))
    ending = meta["file_ending"]
    if ending not in NIFTI_ENDINGS:
        raise DataError(path, f"file_ending: {ending!r} is not supported; expected .nii.gz or .nii")
    table = _label_table(path, meta["labels"], root.name)

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    cases: list[Case] = []
    image_files = sorted(images_dir.glob(f"*{ending}")) if images_dir.is_dir() else []
    for image in image_files:
        stem = image.name[: -len(ending)]
        if not stem.endswith(CHANNEL_SUFFIX):
            problems.append(
                Problem(image, f"expected one CT channel named <case>{CHANNEL_SUFFIX}{ending}")
            )
            continue
        case_id = stem[: -len(CHANNEL_SUFFIX)]
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            problems.append(Problem(label, f"label map missing for image {image.name}"))
            continue
        cases.append(Case(case_id, image, label))
    if not cases:
        raise DataError(
            images_dir,
            f"no training cases (expected imagesTr/<case>{CHANNEL_SUFFIX}{ending} "
            f"with labelsTr/<case>{ending})",
        )
    declared = meta.get("numTraining")
    if declared is not None and declared != len(image_files):
        problems.append(
            Problem(
                path,
                f"numTraining is {declared} but imagesTr holds {len(image_files)} images",
                Severity.WARNING,
            )
        )
    return TaskDataset(root.name, Layout.NNUNET_V2, root, table, tuple(cases), tuple(problems))


@dataclass(frozen=True)
class CaseArrays:
    """A case in memory, ready to be written: HU image, label map, voxel-to-RAS affine."""

    case_id: str
    image: NDArray[np.generic]
    label: NDArray[np.generic]
    affine: NDArray[np.floating]


def write_nnunet(
    root: str | Path,
    structures: Sequence[str],
    cases: Iterable[CaseArrays],
    *,
    file_ending: str = ".nii.gz",
    description: str = "",
) -> TaskDataset:
    """Write cases as an nnU-Net v2 raw dataset; label ids are 1..K in ``structures`` order.

    ``dataset.json`` is written last, so an interrupted write never looks complete. Every
    file is written atomically.

    Raises:
        ValueError: for an unknown structure, a bad file ending, or an image and label
            that differ in shape.
    """
    root = Path(root)
    for name in structures:
        anatomy.get(name)
    if file_ending not in NIFTI_ENDINGS:
        raise ValueError(f"file_ending must be one of {NIFTI_ENDINGS}, got {file_ending!r}")
    ids = range(1, len(structures) + 1)
    table = LabelTable.from_names(dict(zip(ids, structures, strict=True)), context="", source=root)
    written: list[Case] = []
    for case in cases:
        if case.image.shape != case.label.shape:
            raise ValueError(
                f"case {case.case_id}: image shape {case.image.shape} != label {case.label.shape}"
            )
        image = root / "imagesTr" / f"{case.case_id}{CHANNEL_SUFFIX}{file_ending}"
        label = root / "labelsTr" / f"{case.case_id}{file_ending}"
        write_volume(image, case.image, case.affine)
        write_volume(label, case.label.astype(table.dtype()), case.affine)
        written.append(Case(case.case_id, image, label))
    meta = {
        "name": root.name,
        "description": description,
        "channel_names": {"0": "CT"},
        "labels": table.to_nnunet(),
        "numTraining": len(written),
        "file_ending": file_ending,
    }
    atomic_write_json(root / "dataset.json", meta)
    return TaskDataset(root.name, Layout.NNUNET_V2, root, table, tuple(written))
