"""A finished ``csfl simulate`` folder, opened for the reports that read it again.

``csfl trim-report`` and ``csfl privacy-audit`` score the run's decoders on its sites' data:
:func:`open_run` reads the plan, the catalog and its frozen encoder, and every task's
training split and test set; :func:`trained_decoder` rebuilds a task's full decoder as its
training phase ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.data.transforms import Preprocessing
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.phases import BASE, TEACHER
from core.phases.training import checkpoint_decoder
from server.catalog import Catalog
from server.plan import Plan, load_plan
from simulations.run import PLAN
from simulations.scenario import Scenario
from simulations.task_data import TaskData, load_tasks


@dataclass(frozen=True)
class FinishedRun:
    """What a report needs of a run.

    Attributes:
        plan: the plan it ran (``RUN/plan.toml``).
        catalog: its catalog.
        unified: the frozen shared encoder and each task's registered decoder.
        prep: the preprocessing the encoder was trained with.
        roi: its patch, the sliding window.
        tasks: each task's pooled training splits and test set, by name.
        first: the name of the task that trained the encoder.
    """

    plan: Plan
    catalog: Catalog
    unified: ContinualSegmenter
    prep: Preprocessing
    roi: tuple[int, int, int]
    tasks: dict[str, TaskData]
    first: str

    @property
    def encoder(self) -> Encoder:
        """The frozen shared encoder."""
        return self.unified.encoder

    def trained_decoder(self, task: str) -> Decoder:
        """A task's full decoder as its training phase ended: what the coordinator received.

        That is the ``base`` checkpoint for the first task, else ``teacher``: before any
        trimming.
        """
        widths = self.plan.encoder.widths
        phase = BASE if task == self.first else TEACHER
        state, _ = self.catalog.load_checkpoint(task, phase.name)
        structures = self.plan.task(task).structures
        decoder = Decoder(widths, Genotype.teacher(len(widths) - 1), structures)
        decoder.load_state_dict(checkpoint_decoder(state))
        return decoder


def open_run(run: Path, scenario: Scenario) -> FinishedRun:
    """Open ``run`` (``plan.toml``, ``catalog/``, ``sites/``), simulated from ``scenario``.

    Raises:
        ValueError: for a folder without a plan (nothing is written into it) or a catalog
            without an encoder.
    """
    plan = load_plan(run / PLAN)  # first: a folder without a run is left untouched
    catalog = Catalog(run / "catalog")
    entry = catalog.index["encoder"]
    if entry is None:
        raise ValueError(f"{run / 'catalog'}: no encoder: run csfl simulate first")
    patch = [int(v) for v in entry["patch"]]
    training = plan.training
    tasks = load_tasks(scenario, run / "sites", training.val_fraction, training.seed)
    return FinishedRun(
        plan,
        catalog,
        catalog.model(),
        Preprocessing.from_json(entry["preprocessing"]),
        (patch[0], patch[1], patch[2]),
        {t.name: t for t in tasks},
        scenario.tasks[0].name,
    )
