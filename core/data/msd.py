"""Medical Segmentation Decathlon layout: ``dataset.json`` with a ``training`` list.

MSD tables map ids to names (``{"0": "background", "1": "liver", "2": "cancer"}``) and
list cases as ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``.
Generic names such as ``"cancer"`` resolve from the organ beside them or the task name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.data.dataset import Case, LabelTable, Layout, TaskDataset
from core.data.dataset_json import load_dataset_json, path_inside, single_ct_channel
from core.data.nifti import strip_nifti_ending
from core.data.problems import DataError, Problem, Severity


def _label_table(path: Path, labels: dict[str, Any], context: str) -> LabelTable:
    names_by_id: dict[int, str] = {}
    for key, name in labels.items():
        try:
            label_id = int(key)
        except ValueError:
            raise DataError(path, f"labels: key {key!r} is not an integer id") from None
        if not isinstance(name, str):
            raise DataError(path, f"labels: id {key} has name {name!r}; expected a string")
        if label_id != 0:
            names_by_id[label_id] = name
    if "0" not in labels:
        raise DataError(path, 'labels: expected "0": "background"')
    return LabelTable.from_names(names_by_id, context=context, source=path)


def _entry_path(root: Path, path: Path, index: int, entry: Any, key: str) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
        raise DataError(path, f"training[{index}]: expected an object with string {key!r}")
    return path_inside(root, entry[key], path, f"training[{index}].{key}")


def read_msd(root: str | Path) -> TaskDataset:
    """Read a Medical Segmentation Decathlon task folder (e.g. ``Task03_Liver``).

    Cases whose files are missing are left out and listed in ``problems``.

    Raises:
        DataError: for a missing or malformed ``dataset.json`` or no usable case.
    """
    root = Path(root)
    path = root / "dataset.json"
    meta = load_dataset_json(path, {"labels": dict, "training": list})
    problems: list[Problem] = []
    if "modality" in meta:
        if not isinstance(meta["modality"], dict):
            raise DataError(path, 'modality: expected an object such as {"0": "CT"}')
        if warning := single_ct_channel(path, "modality", meta["modality"]):
            problems.append(Problem(path, warning, Severity.WARNING))
    context = f"{root.name} {meta.get('name', '')}"
    table = _label_table(path, meta["labels"], context)

    cases: list[Case] = []
    for i, entry in enumerate(meta["training"]):
        image = _entry_path(root, path, i, entry, "image")
        label = _entry_path(root, path, i, entry, "label")
        missing = [p for p in (image, label) if not p.is_file()]
        if missing:
            problems += [Problem(p, f"listed in training[{i}] but not found") for p in missing]
            continue
        cases.append(Case(strip_nifti_ending(image.name), image, label))
    if not cases:
        raise DataError(path, "training: no usable case (expected image and label files)")
    return TaskDataset(
        str(meta.get("name") or root.name), Layout.MSD, root, table, tuple(cases), tuple(problems)
    )
