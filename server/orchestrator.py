"""The task lifecycle: match sites to tasks and run each unfinished task through its phases."""

from __future__ import annotations

import logging

import torch

from core.model import Encoder
from core.training import Phase
from server.calibration import Calibrate
from server.catalog import Catalog
from server.federation import Federation, SiteInfo
from server.phases import (
    Evaluation,
    FederatedTraining,
    PhaseStep,
    Registration,
    TaskJob,
    initial_decoder,
)
from server.plan import Plan, TaskPlan
from server.trimming import ArchitectureSearch, Distillation

log = logging.getLogger(__name__)


def lifecycle(task: TaskPlan, first_task: bool) -> list[PhaseStep]:
    """A task's phases in order.

    The first task trains the encoder with its decoder (``base``), later ones train a full
    decoder on the frozen encoder (``teacher``); with ``trim`` a compact student is then
    searched and distilled, and only the student is evaluated and registered; with
    ``calibrate`` its confidence and anomaly heads are trained and its body-part range
    recorded before that.
    """
    training: list[PhaseStep] = [FederatedTraining(Phase.BASE if first_task else Phase.TEACHER)]
    trimming: list[PhaseStep] = [ArchitectureSearch(), Distillation()] if task.trim else []
    calibrating: list[PhaseStep] = [Calibrate()] if task.calibrate else []
    return [*training, *trimming, *calibrating, Evaluation(), Registration()]


def match_sites(task: TaskPlan, sites: list[SiteInfo]) -> list[SiteInfo]:
    """The sites that serve a task.

    A site serves if the plan names it (or says any) and it holds a dataset that labels
    all of the task's structures.
    """
    wanted = [s for s in sites if task.sites is None or s.name in task.sites]
    serving = [s for s in wanted if s.cases_for(task.structures) > 0]
    for site in wanted:
        if site not in serving:
            log.warning(
                "%s: site %s has no dataset labelling %s",
                task.name,
                site.name,
                list(task.structures),
            )
    return serving


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
        """
        sites = self.federation.describe_sites()
        log.info("sites: %s", [(s.name, [d[0] for d in s.datasets]) for s in sites])
        self.catalog.journal("run-start", sites=[s.name for s in sites])
        finished = []
        for index, task in enumerate(self.plan.tasks):
            if self.catalog.has_task(task.name):
                continue
            first = index == 0
            encoder = self.catalog.encoder()
            if encoder is None and not first:
                log.warning(
                    "%s: waits for the first task, which trains the shared encoder", task.name
                )
                break
            serving = match_sites(task, sites)
            if len(serving) < task.min_sites:
                log.warning(
                    "%s: %d site(s) present, needs %d; skipped in this run",
                    task.name,
                    len(serving),
                    task.min_sites,
                )
                continue
            if encoder is None:
                torch.manual_seed(self.plan.seed)
                encoder = Encoder(self.plan.encoder)
            job = TaskJob(
                self.plan,
                task,
                self.catalog,
                self.federation,
                serving,
                encoder,
                initial_decoder(self.plan, task),
            )
            for step in lifecycle(task, first):
                step.run(job)
            finished.append(task.name)
        self.catalog.journal("run-end", finished=finished)
        return finished
