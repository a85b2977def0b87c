"""``csfl trim-report``: how much the trimmed students keep of their teachers, and why.

For every task of a finished simulation it compares, on the task's held-out cases:

- the teacher (full decoder) and the federated student that the catalog holds;
- three students trained here, centrally, on the union of the task's sites' training
  cases with the same number of steps as the federated distillation, each started from
  the teacher's weights like the federated one: the searched genotype with KD, the
  searched genotype without KD, and a hand-picked genotype of about the same size
  (uniform narrow 3d) with KD.

It also gives the unified model's size against one encoder and one full decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.transforms import Preprocessing
from core.local.distill import distill_phase
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.model.cost import count_parameters, genotype_parameters
from core.model.genotype import WIDTH_CHOICES
from core.model.inherit import inherit
from core.phases import DISTILL, SEARCH
from core.scores import task_mean
from server.plan import Plan, TaskPlan
from simulations.benchmarks.finished_run import FinishedRun, open_run
from simulations.evaluate import score_model
from simulations.scenario import Scenario
from simulations.task_data import TaskData


def uniform_3d_like(widths: tuple[int, ...], size: int, n_structures: int) -> Genotype:
    """The widest uniform 3d genotype no larger than ``size`` (else the narrowest)."""
    n = len(widths) - 1
    options = [Genotype.uniform("3d", w, n) for w in sorted(WIDTH_CHOICES, reverse=True)]
    for genotype in options:
        if genotype_parameters(widths, genotype, n_structures) <= size:
            return genotype
    return options[-1]


@dataclass
class Students:
    """What the comparison of one task needs: its plan, decoders and data."""

    task: TaskPlan
    teacher: Decoder
    student: Decoder
    searched: Genotype
    data: TaskData


def _score(
    encoder: Encoder,
    data: TaskData,
    decoder: Decoder,
    prep: Preprocessing,
    roi: tuple[int, int, int],
) -> dict[str, Any]:
    model = ContinualSegmenter(encoder)
    model.add_decoder(data.name, decoder)
    mean = task_mean(score_model(model, data, prep, roi).means("dice"))
    return {
        "genotype": str(decoder.genotype),
        "parameters": count_parameters(decoder),
        "dice": 0.0 if mean is None else mean,
    }


def compare_students(
    encoder: Encoder, students: Students, plan: Plan, prep: Preprocessing, roi: tuple[int, int, int]
) -> dict[str, Any]:
    """The teacher, the federated student and three centrally trained students, scored."""
    task, data, widths = students.task, students.data, encoder.config.widths
    rows = {
        "teacher": _score(encoder, data, students.teacher, prep, roi),
        "student (federated)": _score(encoder, data, students.student, prep, roi),
    }
    teacher_model = ContinualSegmenter(encoder)
    teacher_model.add_decoder(task.name, students.teacher)  # the KD source of the central students
    distill = task.of(DISTILL)
    settings = plan.train_settings(task, steps=distill.rounds * distill.steps)
    size = genotype_parameters(widths, students.searched, len(task.structures))
    alternatives = (
        ("searched + KD (central)", students.searched, distill.kd_weight),
        ("searched, no KD (central)", students.searched, 0.0),
        (
            "uniform narrow 3d + KD (central)",
            uniform_3d_like(widths, size, len(task.structures)),
            distill.kd_weight,
        ),
    )
    for label, genotype, kd in alternatives:
        student = inherit(Decoder(widths, genotype, task.structures), students.teacher)
        distill_phase(
            teacher_model,
            task.name,
            student,
            data.table,
            data.train_cases,
            prep,
            settings,
            kd,
            distill.temperature,
        )
        rows[label] = _score(encoder, data, student, prep, roi)
    return rows


def _students(run: FinishedRun, name: str) -> Students:
    """A task's teacher (the base model's decoder for the first task), student and genotype."""
    search = run.catalog.load_checkpoint(name, SEARCH.name)[1]
    return Students(
        run.plan.task(name),
        run.trained_decoder(name),
        run.unified.decoder(name),
        Genotype.from_json(search["genotype"]),
        run.tasks[name],
    )


def trim_report(folder: Path, scenario: Scenario) -> dict[str, Any]:
    """Measure every figure; see the module docstring."""
    run = open_run(folder, scenario)
    tasks = {}
    for task_entry in run.catalog.tasks():
        name = task_entry["name"]
        tasks[name] = compare_students(
            run.encoder, _students(run, name), run.plan, run.prep, run.roi
        )
    widths = run.encoder.config.widths
    teacher_size = genotype_parameters(
        widths, Genotype.teacher(len(widths) - 1), len(run.plan.tasks[0].structures)
    )
    one_model = count_parameters(run.encoder) + teacher_size
    size = count_parameters(run.unified)
    return {
        "tasks": tasks,
        "unified_parameters": size,
        "one_encoder_one_full_decoder": one_model,
        "ratio": size / one_model,
    }


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table per task, then the unified size."""
    lines = [
        "| task | decoder | genotype | parameters | share of teacher | mean Dice | kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in report["tasks"].items():
        teacher = rows["teacher"]
        for label, row in rows.items():
            share = row["parameters"] / teacher["parameters"]
            kept = row["dice"] / teacher["dice"] if teacher["dice"] else float("nan")
            cells = [task, label, f"`{row['genotype']}`", f"{row['parameters']:,}", f"{share:.0%}"]
            cells += [f"{row['dice']:.3f}", f"{kept:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nUnified model: {report['unified_parameters']:,} parameters = {report['ratio']:.2f} x "
        f"one encoder + one full decoder ({report['one_encoder_one_full_decoder']:,})"
    )
    return "\n".join(lines)
