"""``csfl site check``: read every dataset and case of a site and report all problems."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.data.dataset import TaskDataset, inspect_case
from core.data.discover import discover
from core.data.nifti import max_voxels
from core.data.problems import Problem, Severity


@dataclass
class DatasetSummary:
    """What a site's dataset holds, as ``site check`` reports it."""

    dataset: TaskDataset
    usable_cases: int = 0
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    orientations: Counter[str] = field(default_factory=Counter)
    cases_with: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary; only aggregate figures, no case identifiers."""
        ds = self.dataset

        def ranges(values: list[tuple[Any, Any, Any]]) -> list[list[float]] | None:
            if not values:
                return None
            arr = np.asarray(values, dtype=float)
            return [arr.min(axis=0).round(3).tolist(), arr.max(axis=0).round(3).tolist()]

        return {
            "name": ds.name,
            "layout": str(ds.layout),
            "root": str(ds.root),
            "cases": len(ds.cases),
            "usable_cases": self.usable_cases,
            "labels": [
                {
                    "id": lb.id,
                    "structure": lb.structure,
                    "source_name": lb.source_name,
                    "cases_with": self.cases_with[lb.structure],
                }
                for lb in ds.labels.labels
            ],
            "shape_range": ranges(self.shapes),
            "spacing_range_mm": ranges(self.spacings),
            "orientations": dict(self.orientations),
        }


@dataclass
class SiteReport:
    """Everything ``site check`` found in a data folder."""

    data_dir: Path
    datasets: list[DatasetSummary]
    problems: list[Problem]

    @property
    def all_problems(self) -> list[Problem]:
        """Folder-level problems first, then each dataset's."""
        return self.problems + [p for d in self.datasets for p in d.problems]

    @property
    def ok(self) -> bool:
        """Whether no problem is an error."""
        return not any(p.severity == Severity.ERROR for p in self.all_problems)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "data_dir": str(self.data_dir),
            "ok": self.ok,
            "datasets": [d.to_json() for d in self.datasets],
            "problems": [
                {"severity": str(p.severity), "path": str(p.path), "message": p.message}
                for p in self.all_problems
            ],
        }


def summarize(dataset: TaskDataset, progress: bool = False) -> DatasetSummary:
    """Load every case of a dataset, gathering its figures and all its problems."""
    summary = DatasetSummary(dataset, problems=list(dataset.problems))
    cases = tqdm(dataset.cases, desc=dataset.name, unit="case", disable=not progress, leave=False)
    for case in cases:
        loaded, problems = inspect_case(case, dataset.labels)
        summary.problems += problems
        if loaded is None:
            continue
        summary.usable_cases += 1
        summary.shapes.append(loaded.image.header.shape)
        summary.spacings.append(loaded.image.header.spacing)
        summary.orientations[loaded.image.header.orientation] += 1
        if loaded.label is not None:
            present = np.unique(loaded.label)  # bincount would allocate up to the largest id
            for label in dataset.labels.labels:
                if label.id in present:
                    summary.cases_with[label.structure] += 1
    return summary


def check_site(data_dir: str | Path, progress: bool = False) -> SiteReport:
    """Find every dataset in ``data_dir`` and check each of its cases."""
    try:
        max_voxels()
    except ValueError as e:  # a bad cap would stop every read: say so once
        return SiteReport(Path(data_dir), [], [Problem(Path(data_dir), str(e))])
    datasets, problems = discover(data_dir)
    return SiteReport(Path(data_dir), [summarize(d, progress) for d in datasets], problems)


def _span(values: list[tuple[Any, Any, Any]], fmt: str) -> str:
    arr = np.asarray(values, dtype=float)
    parts = []
    for lo, hi in zip(arr.min(axis=0), arr.max(axis=0), strict=True):
        parts.append(format(lo, fmt) if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}")
    return " x ".join(parts)


def format_report(report: SiteReport) -> str:
    """The report as people read it: one block per task, then one line per problem."""
    lines = [f"Site data: {report.data_dir}"]
    for summary in report.datasets:
        ds = summary.dataset
        lines.append(
            f"\nTask {ds.name}  [{ds.layout}]  {summary.usable_cases}/{len(ds.cases)} cases usable"
        )
        lines.append(f"  structures ({len(ds.labels.labels)}):")
        for label in ds.labels.labels:
            renamed = "" if label.source_name == label.structure else f"  <- {label.source_name!r}"
            count = summary.cases_with[label.structure]
            lines.append(f"    {label.id:>3}  {label.structure:<32} in {count} case(s){renamed}")
        if summary.shapes:
            lines.append(f"  shape (voxels): {_span(summary.shapes, '.0f')}")
            lines.append(f"  spacing (mm):   {_span(summary.spacings, '.2f')}")
            orient = ", ".join(f"{k} ({v})" for k, v in sorted(summary.orientations.items()))
            lines.append(f"  orientation:    {orient}")
    problems = report.all_problems
    errors = sum(p.severity == Severity.ERROR for p in problems)
    lines.append(f"\nProblems: {errors} error(s), {len(problems) - errors} warning(s)")
    lines += [f"  {p}" for p in problems]
    lines.append("OK: ready to join." if report.ok else "NOT READY: fix the errors above.")
    return "\n".join(lines)
