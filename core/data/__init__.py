"""Dataset layouts (nnU-Net v2, MSD, TotalSegmentator), checked NIfTI I/O, MONAI chains."""

from core.data.dataset import (
    Case,
    Label,
    LabelTable,
    Layout,
    LoadedCase,
    TaskDataset,
    combine_masks,
    inspect_case,
    load_case,
    split_cases,
    validation_count,
)
from core.data.discover import discover, open_dataset
from core.data.nnunet import CaseArrays, read_nnunet, write_nnunet
from core.data.problems import DataError, Problem, Severity

__all__ = [
    "Case",
    "CaseArrays",
    "DataError",
    "Label",
    "LabelTable",
    "Layout",
    "LoadedCase",
    "Problem",
    "Severity",
    "TaskDataset",
    "combine_masks",
    "discover",
    "inspect_case",
    "load_case",
    "open_dataset",
    "read_nnunet",
    "split_cases",
    "validation_count",
    "write_nnunet",
]
