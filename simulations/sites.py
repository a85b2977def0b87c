"""A scenario's synthetic hospitals on disk: one nnU-Net v2 dataset and preview per site.

:func:`write_scenario` draws every site's phantoms and each task's held-out test cases
(the same scenario and seed give the same bytes); :func:`open_written` opens what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.data import CaseArrays, TaskDataset, open_dataset, write_nnunet
from simulations.phantoms import make_case
from simulations.phantoms.preview import write_preview
from simulations.scenario import TEST_FOLDER, Scenario, SiteSpec

PREVIEW = "preview.png"  # a site's preview, beside its dataset


@dataclass(frozen=True)
class WrittenSite:
    """Where a site's data went."""

    site: str
    task: str
    dataset: TaskDataset
    preview: Path


def _cases(
    scenario: Scenario, site: SiteSpec, prefix: str, n: int, size: int, first: list[CaseArrays]
) -> Iterator[CaseArrays]:
    """Generate a site's cases; the first one is also kept in ``first`` for the preview."""
    structures = scenario.task(site.task).structures
    for i in range(n):
        case = make_case(
            scenario.case_seed(prefix, i),
            structures,
            site.region,
            size,
            site.scanner,
            site.lesions,
            site.lesion_rate,
        )
        arrays = CaseArrays(f"{prefix}_{i:03d}", case.image, case.label, case.affine)
        if not first:
            first.append(arrays)
        yield arrays


def write_scenario(
    scenario: Scenario,
    out: str | Path,
    size: int | None = None,
    cases: int | None = None,
    progress: bool = False,
) -> list[WrittenSite]:
    """Write every site's dataset (nnU-Net v2) with a preview PNG, and each task's test set.

    Layout: ``OUT/<site>/Dataset<NNN>_<task>/`` and ``OUT/<site>/preview.png`` per site;
    ``OUT/test/Dataset<NNN>_<task>/`` per task, drawn like the task's first site.

    Args:
        scenario: what to write.
        out: the folder.
        size: voxels per side instead of the scenario's.
        cases: cases per site instead of the scenario's.
        progress: show a progress bar.
    """
    out = Path(out)
    side = size or scenario.size
    jobs = [(s, s.name, cases or s.cases, out / s.name, PREVIEW) for s in scenario.sites]
    jobs += [
        (
            scenario.sites_of(t.name)[0],
            f"test_{t.name}",
            t.test_cases,
            out / TEST_FOLDER,
            f"preview_{t.name}.png",
        )
        for t in scenario.tasks
        if t.test_cases
    ]
    written = []
    bar = tqdm(jobs, desc=f"phantoms {scenario.name}", unit="site", disable=not progress)
    for site, prefix, n, folder, preview_name in bar:
        task = scenario.task(site.task)
        first: list[CaseArrays] = []
        dataset = write_nnunet(
            folder / scenario.dataset_folder(task.name),
            task.structures,
            _cases(scenario, site, prefix, n, side, first),
            description=f"scenario {scenario.name}, site {site.name}",
        )
        title = f"{scenario.name}: {site.name} ({task.name}, {site.region}), {first[0].case_id}"
        preview = write_preview(
            folder / preview_name,
            first[0].image,
            first[0].label,
            first[0].affine,
            task.structures,
            title,
        )
        if not prefix.startswith("test_"):
            written.append(WrittenSite(site.name, task.name, dataset, preview))
    return written


def open_written(scenario: Scenario, out: Path) -> list[WrittenSite]:
    """The sites that :func:`write_scenario` wrote into ``out``, read back (not drawn again)."""
    return [
        WrittenSite(
            s.name,
            s.task,
            open_dataset(out / s.name / scenario.dataset_folder(s.task)),
            out / s.name / PREVIEW,
        )
        for s in scenario.sites
    ]
