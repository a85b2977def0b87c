"""TotalSegmentator layout: ``<case>/ct.nii.gz`` + ``<case>/segmentations/<name>.nii.gz``.

Each case holds one binary mask per structure. Label ids are 1..K over the structures
found in any case, in vocabulary order. A structure whose mask a case lacks counts as
absent in that case (reported as a warning). Overlapping masks resolve by
:func:`core.data.dataset.combine_masks`: the smaller mask wins.
"""

from __future__ import annotations

from pathlib import Path

from core import anatomy
from core.data.dataset import Case, LabelTable, Layout, TaskDataset
from core.data.nifti import strip_nifti_ending
from core.data.problems import DataError, Problem, Severity

IMAGE_NAME = "ct.nii.gz"
MASKS_DIR = "segmentations"


def is_totalseg_case(folder: Path) -> bool:
    """Whether a folder looks like one TotalSegmentator case."""
    return (folder / IMAGE_NAME).is_file() and (folder / MASKS_DIR).is_dir()


def _mask_files(case_dir: Path) -> dict[str, Path]:
    masks = sorted((case_dir / MASKS_DIR).glob("*.nii*"))
    return {strip_nifti_ending(p.name): p for p in masks}


def read_totalseg(root: str | Path) -> TaskDataset:
    """Read a folder of TotalSegmentator-layout cases.

    Raises:
        DataError: if no case is found, or a mask name is not in the vocabulary (every
            unknown name is listed with the closest vocabulary names).
    """
    root = Path(root)
    case_dirs = sorted(d for d in root.iterdir() if d.is_dir() and is_totalseg_case(d))
    if not case_dirs:
        raise DataError(root, f"no case folders with {IMAGE_NAME} and {MASKS_DIR}/")
    masks_by_case = {d: _mask_files(d) for d in case_dirs}
    names = sorted({name for masks in masks_by_case.values() for name in masks})
    if not names:
        raise DataError(root, f"no masks found under <case>/{MASKS_DIR}/")
    # Resolve once as a table so every unknown mask name is reported together.
    by_name = LabelTable.from_names(dict(enumerate(names, 1)), context="", source=root)
    structure_of = {label.source_name: label.structure for label in by_name.labels}
    ordered = anatomy.canonical_order(structure_of.values())
    table = LabelTable.from_names(dict(enumerate(ordered, 1)), context="", source=root)

    problems: list[Problem] = []
    cases: list[Case] = []
    for case_dir, masks in masks_by_case.items():
        absent = [n for n in names if n not in masks]
        if absent:
            shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
            problems.append(
                Problem(
                    case_dir / MASKS_DIR,
                    f"{len(absent)} mask(s) missing, treated as empty: {shown}",
                    Severity.WARNING,
                )
            )
        pairs = sorted((table.id_of(structure_of[n]), p) for n, p in masks.items())
        cases.append(Case(case_dir.name, case_dir / IMAGE_NAME, masks=tuple(pairs)))
    return TaskDataset(
        root.name, Layout.TOTALSEGMENTATOR, root, table, tuple(cases), tuple(problems)
    )
