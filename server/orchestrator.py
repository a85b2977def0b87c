"""The task lifecycle: match sites to tasks and run each unfinished task through its phases."""

from __future__ import annotations

import logging

import torch

from core.model import Decoder, Encoder, Genotype
from core.phases import BASE, CALIBRATE, DISTILL, EVALUATE, PHASES, SEARCH, TEACHER
from core.phases.spec import TaskState
from server.catalog import Catalog
from server.federation import Federation, SiteInfo
from server.plan import Plan, TaskPlan
from server.steps import Registration, Step, TaskRun

log = logging.getLogger(__name__)


def lifecycle(task: TaskPlan, first_task: bool) -> list[Step]:
    """A task's steps in order.

    The first task trains the encoder with its decoder (``base``), later ones train a full
    decoder on the frozen encoder (``teacher``); with ``trim`` a compact student is then
    searched and distilled, and only the student is evaluated and registered; with
    ``calibrate`` its confidence and anomaly heads are trained and its domain
    recorded before that.
    """
    training: list[Step] = [BASE if first_task else TEACHER]
    trimming: list[Step] = [SEARCH, DISTILL] if task.section.trim else []
    calibrating: list[Step] = [CALIBRATE] if task.section.calibrate else []
    phases = [*training, *trimming, *calibrating, EVALUATE]
    return [*phases, Registration([p.name for p in phases])]


def planned_rounds(task: TaskPlan, first_task: bool) -> int:
    """How many federated rounds a task's lifecycle has (evaluation counts one)."""
    settings = [task.of(PHASES[s.name]) for s in lifecycle(task, first_task) if s.name in PHASES]
    return sum(int(getattr(s, "rounds", 1)) for s in settings)


def initial_decoder(plan: Plan, task: TaskPlan) -> Decoder:
    """A fresh full-width (teacher) decoder for a task, seeded by the plan."""
    torch.manual_seed(plan.training.seed + sum(map(ord, task.name)))
    return Decoder(
        plan.encoder.widths, Genotype.teacher(len(plan.encoder.widths) - 1), task.structures
    )


def match_sites(task: TaskPlan, sites: list[SiteInfo]) -> list[SiteInfo]:
    """The sites that serve a task.

    A site serves if the plan names it (or says any) and it holds a dataset that labels
    all of the task's structures (with ``partial_labels``: at least one of them).
    """
    wanted = [s for s in sites if task.sites is None or s.name in task.sites]
    partial = task.section.partial_labels
    serving = [s for s in wanted if s.cases_for(task.structures, partial) > 0]
    for site in wanted:
        if site not in serving:
            log.warning(
                "%s: site %s has no dataset labelling %s",
                task.name,
                site.name,
                list(task.structures),
            )
    return serving


class NoSiteError(RuntimeError):
    """No connected site serves any unfinished task: the run can do nothing."""


class Orchestrator:
    """Runs every task of the plan that the catalog does not hold yet, in plan order."""

    def __init__(self, plan: Plan, catalog: Catalog, federation: Federation) -> None:
        self.plan = plan
        self.catalog = catalog
        self.federation = federation

    def run(self) -> list[str]:
        """Run what can run now; returns the tasks finished in this run.

        A task whose sites are not connected (fewer than its minimum) waits for a later
        run; tasks after it still run if the shared encoder exists.

        Raises:
            NoSiteError: tasks are unfinished and no connected site serves any of them
                (no node connected, or none holds the data): nothing would ever happen.
        """
        sites = self.federation.describe_sites()
        log.info("sites: %s", [(s.name, [d[0] for d in s.datasets]) for s in sites])
        self.catalog.journal("run-start", sites=[s.name for s in sites])
        finished: list[str] = []
        unfinished = [t.name for t in self.plan.tasks if not self.catalog.has_task(t.name)]
        served = False
        for index, task in enumerate(self.plan.tasks):
            if task.name not in unfinished:
                continue
            first = index == 0
            encoder = self.catalog.encoder()
            if encoder is None and not first:
                log.warning(
                    "%s: waits for the first task, which trains the shared encoder", task.name
                )
                break
            serving = match_sites(task, sites)
            served = served or bool(serving)
            if len(serving) < task.section.min_sites:
                log.warning(
                    "%s: %d site(s) present, needs %d; skipped in this run",
                    task.name,
                    len(serving),
                    task.section.min_sites,
                )
                continue
            if encoder is None:
                torch.manual_seed(self.plan.training.seed)
                encoder = Encoder(self.plan.encoder)
            run = TaskRun(self.plan, task, self.catalog, self.federation, tuple(serving))
            state = TaskState(encoder, initial_decoder(self.plan, task))
            for step in lifecycle(task, first):
                state = run.run(step, state)
            finished.append(task.name)
        if unfinished and not served:
            connected = [s.name for s in sites] or "none"
            error = f"no connected site serves any unfinished task {unfinished}; sites: {connected}"
            self.catalog.journal("run-end", finished=finished, error=error)
            raise NoSiteError(error)
        self.catalog.journal("run-end", finished=finished)
        return finished
