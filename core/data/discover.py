"""Finding datasets under a site's data folder and telling their layout apart."""

from __future__ import annotations

from pathlib import Path

from core.data.dataset import Layout, TaskDataset
from core.data.dataset_json import read_json_file
from core.data.msd import read_msd
from core.data.nnunet import read_nnunet
from core.data.problems import DataError, Problem
from core.data.totalseg import is_totalseg_case, read_totalseg

LAYOUT_HELP = (
    "expected nnU-Net v2 raw (dataset.json + imagesTr/ + labelsTr/), the Medical "
    "Segmentation Decathlon (dataset.json with a 'training' list) or TotalSegmentator "
    "(<case>/ct.nii.gz + <case>/segmentations/<structure>.nii.gz)"
)


def detect_layout(folder: Path) -> Layout | None:
    """The layout of a dataset folder, or ``None`` if it does not look like a dataset.

    A ``dataset.json`` with a ``training`` list is MSD, any other is nnU-Net v2 (an
    unreadable one too, so that reading it reports why). Case folders holding
    ``ct.nii.gz`` and ``segmentations/`` are TotalSegmentator.
    """
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        try:
            meta = read_json_file(meta_path)
        except DataError:
            return Layout.NNUNET_V2
        is_msd = isinstance(meta, dict) and "training" in meta and "channel_names" not in meta
        return Layout.MSD if is_msd else Layout.NNUNET_V2
    if (folder / "imagesTr").is_dir() or (folder / "labelsTr").is_dir():
        return Layout.NNUNET_V2  # dataset.json missing: reading it says so
    if folder.is_dir() and any(d.is_dir() and is_totalseg_case(d) for d in folder.iterdir()):
        return Layout.TOTALSEGMENTATOR
    return None


_READERS = {
    Layout.NNUNET_V2: read_nnunet,
    Layout.MSD: read_msd,
    Layout.TOTALSEGMENTATOR: read_totalseg,
}


def open_dataset(folder: str | Path) -> TaskDataset:
    """Read one dataset folder in whichever layout it has.

    Raises:
        DataError: if the folder is not a dataset of a known layout, or is malformed.
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout is None:
        raise DataError(folder, f"not a dataset folder: {LAYOUT_HELP}")
    return _READERS[layout](folder)


def discover(data_dir: str | Path) -> tuple[list[TaskDataset], list[Problem]]:
    """Every dataset in a site's data folder: the folder itself, or its sub-folders.

    Returns:
        The datasets that could be read, and a problem for each one that could not.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [], [Problem(data_dir, "data folder not found")]
    if detect_layout(data_dir) is not None:
        candidates = [data_dir]
    else:
        subdirs = sorted(d for d in data_dir.iterdir() if d.is_dir())
        candidates = [d for d in subdirs if detect_layout(d) is not None]
    datasets: list[TaskDataset] = []
    problems: list[Problem] = []
    for folder in candidates:
        try:
            datasets.append(open_dataset(folder))
        except DataError as e:
            problems.append(e.problem())
    if not candidates:
        problems.append(Problem(data_dir, f"no dataset found: {LAYOUT_HELP}"))
    return datasets, problems
