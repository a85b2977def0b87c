"""``no_trim`` starts from ``continual``'s training phases: the same training, done once.

The ablation without trimming differs from the full method only after each task's
training phase (the first task's ``base``, a later task's ``teacher``): it keeps the full
decoder where the method searches and distils a student. Those phases are the same rounds
on the same phantoms under the same plan, so when ``continual``'s run holds them they are
copied into ``no_trim``'s fresh catalog (checkpoints, the frozen encoder, their journal
records) and ``no_trim``'s run resumes from them (:meth:`server.steps.TaskRun.run`
restores a phase its journal records as finished). The copied records keep their seconds
and traffic, so the ablation's training time and upload still count the training it
stands on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.phases import BASE, TEACHER
from server.catalog import Catalog
from server.plan import Plan, PlanError, load_plan
from simulations.benchmarks.budget import untrimmed
from simulations.run import CATALOG, PLAN

RECORD_KEYS = ("event", "task", "time")  # a journal record's own keys, not copied


def adopt_training(source: Path, target: Path, plan: Plan, say: Callable[[str], None]) -> int:
    """Copy the training phases ``source`` (a ``continual`` run) finished into ``target``.

    Args:
        source: the full method's run folder (``plan.toml``, ``catalog/``).
        target: the untrimmed run's folder; only a catalog that has journalled nothing
            yet is written to (a resumed run keeps its own phases).
        plan: the plan ``target`` will run: the source's, untrimmed, or nothing is copied.
        say: progress messages.

    Returns:
        How many tasks' training phases were copied (0: ``target`` trains its own).
    """
    try:
        same = untrimmed(load_plan(source / PLAN)) == plan
    except (OSError, PlanError):
        return 0
    theirs, ours = Catalog(source / CATALOG), Catalog(target / CATALOG)
    if not same or ours.events():
        return 0
    copied = 0
    for index, task in enumerate(plan.tasks):
        phase = (BASE if index == 0 else TEACHER).name
        end = theirs.phase_end(task.name, phase)
        if end is None:
            break  # a later task's teacher stands on what the run did before it
        state, meta = theirs.load_checkpoint(task.name, phase)
        ours.save_checkpoint(task.name, phase, state, meta)
        if index == 0:
            encoder = theirs.encoder()
            if encoder is None:
                raise ValueError(f"{theirs.root}: the base phase finished without its encoder")
            ours.set_encoder(encoder, plan.preprocessing, plan.patch)  # the plans are equal
        record = {k: v for k, v in end.items() if k not in RECORD_KEYS}
        ours.journal("phase-end", task.name, **record, copied_from=str(theirs.root))
        copied += 1
    if copied:
        say(f"no_trim: starts from the training phases of {copied} task(s) in {source}")
    return copied
