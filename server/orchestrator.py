"""The task lifecycle: match sites to tasks and run each unfinished task through its phases.

Every run ends with a per-task outcome (:class:`Outcome`), logged as a summary and journaled
with ``run-end``; a run that skipped a task or trained one without a site the plan names
fails after keeping what it trained, unless the plan's ``partial_runs`` allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from core.model import Decoder, Encoder, Genotype
from core.phases import BASE, CALIBRATE, DISTILL, EVALUATE, PHASES, SEARCH, TEACHER
from core.phases.spec import TaskState
from server.catalog import Catalog
from server.federation import MAX_REASON_CHARS, Federation, SiteInfo
from server.peers import PeerSkills
from server.plan import Plan, TaskPlan
from server.steps import Registration, Step, TaskRun

log = logging.getLogger(__name__)


def lifecycle(task: TaskPlan, first_task: bool) -> list[Step]:
    """A task's steps in order.

    The first task trains the encoder with its decoder (``base``), later ones train a full
    decoder on the frozen encoder (``teacher``); with ``trim`` a compact student is then
    searched and distilled, and only the student is evaluated and registered; with
    ``calibrate`` its confidence and anomaly heads are trained and its domain
    recorded before that. After its own evaluation its sites score the earlier decoders
    that share its structures (``server.peers``). A task trained under DP is not evaluated
    by its sites: their validation patients' scores would leave them without noise.
    """
    training: list[Step] = [BASE if first_task else TEACHER]
    trimming: list[Step] = [SEARCH, DISTILL] if task.section.trim else []
    calibrating: list[Step] = [CALIBRATE] if task.section.calibrate else []
    evaluating: list[Step] = [] if task.privacy.on else [EVALUATE]
    phases = [*training, *trimming, *calibrating, *evaluating]
    peers: list[Step] = [PeerSkills()] if evaluating else []
    return [*phases, *peers, Registration([p.name for p in phases])]


def planned_rounds(task: TaskPlan, first_task: bool) -> int:
    """How many federated rounds a task's lifecycle has (evaluation counts one)."""
    settings = [task.of(PHASES[s.name]) for s in lifecycle(task, first_task) if s.name in PHASES]
    return sum(s.rounds for s in settings)


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


class IncompleteRunError(RuntimeError):
    """The run skipped a task or trained one with fewer sites than planned."""


TRAINED, PARTIAL, SKIPPED, FAILED, KEPT = "trained", "partial", "skipped", "failed", "kept"


@dataclass(frozen=True)
class Outcome:
    """What a run did with one task of the plan.

    Attributes:
        task: its name.
        status: ``trained``; ``partial`` (trained, but without a site it planned);
            ``skipped`` (not started: too few sites, or waiting for the first task);
            ``failed`` (stopped by an error); ``kept`` (already in the catalog).
        sites: the sites whose updates it was trained on.
        planned: the sites it was planned with (those named, else those serving it).
        reason: why it was skipped, failed or lost sites.
    """

    task: str
    status: str
    sites: tuple[str, ...] = ()
    planned: tuple[str, ...] = ()
    reason: str = ""

    def line(self) -> str:
        """One line for the run's summary."""
        text = f"{self.task}: {self.status}"
        if self.sites:
            text += f", by {', '.join(self.sites)}"
        if self.planned and self.planned != self.sites:
            text += f" (planned: {', '.join(self.planned)})"
        return text + (f"; {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, object]:
        """Plain JSON for the journal."""
        return {
            "status": self.status,
            "sites": list(self.sites),
            "planned": list(self.planned),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, task: str, data: dict[str, Any]) -> Outcome:
        """From :meth:`to_json` (a journal's ``run-end`` summary)."""
        return cls(
            task,
            str(data["status"]),
            tuple(data.get("sites", ())),
            tuple(data.get("planned", ())),
            str(data.get("reason", "")),
        )

    @property
    def complete(self) -> bool:
        """Whether the run did all the plan asked of this task."""
        return self.status in (TRAINED, KEPT)


def last_run_summary(
    events: list[dict[str, Any]], tasks: Collection[str] | None = None
) -> list[str]:
    """The summary lines of the last run in a catalog's journal (none before a run ended).

    ``tasks``: only these (a simulated stage's; the others wait for their own stage).
    """
    ends = [e for e in events if e.get("event") == "run-end" and "summary" in e]
    if not ends:
        return []
    summary = ends[-1]["summary"].items()
    return [Outcome.from_json(t, o).line() for t, o in summary if tasks is None or t in tasks]


class Orchestrator:
    """Runs every task of the plan that the catalog does not hold yet, in plan order."""

    def __init__(self, plan: Plan, catalog: Catalog, federation: Federation) -> None:
        self.plan = plan
        self.catalog = catalog
        self.federation = federation

    def run(self) -> list[str]:
        """Run what can run now; returns the tasks finished in this run.

        A task whose sites are not connected (fewer than its minimum) waits for a later
        run; tasks after it still run if the shared encoder exists. A task stopped by an
        error stops the run. The per-task outcome is logged and journaled either way.

        Raises:
            NoSiteError: tasks are unfinished and no connected site serves any of them
                (no node connected, or none holds the data): nothing would ever happen.
            IncompleteRunError: a task was skipped or lost a planned site, and the plan
                does not allow partial runs (what was trained is kept).
        """
        sites = self.federation.describe_sites()
        log.info("sites: %s", [(s.name, [d[0] for d in s.datasets]) for s in sites])
        self.catalog.journal("run-start", sites=[s.name for s in sites])
        outcomes, served = self._run_tasks(sites)
        finished = [o.task for o in outcomes if o.status in (TRAINED, PARTIAL)]
        summary = {o.task: o.to_json() for o in outcomes}
        log.info("run summary:\n%s", "\n".join(o.line() for o in outcomes))
        unfinished = [o.task for o in outcomes if o.status != KEPT]
        if unfinished and not served:
            connected = [s.name for s in sites] or "none"
            error = f"no connected site serves any unfinished task {unfinished}; sites: {connected}"
            self.catalog.journal("run-end", finished=finished, error=error, summary=summary)
            raise NoSiteError(error)
        short = [o for o in outcomes if not o.complete]
        failed = any(o.status == FAILED for o in short)
        if short and (failed or not self.plan.training.partial_runs):
            error = "incomplete run: " + "; ".join(o.line() for o in short)
            self.catalog.journal("run-end", finished=finished, error=error, summary=summary)
            raise IncompleteRunError(error)
        self.catalog.journal("run-end", finished=finished, summary=summary)
        return finished

    def _run_tasks(self, sites: list[SiteInfo]) -> tuple[list[Outcome], bool]:
        """Each task's outcome, and whether any unfinished task had a site serving it."""
        outcomes: list[Outcome] = []
        served = False
        stopped_by = ""
        for index, task in enumerate(self.plan.tasks):
            if self.catalog.has_task(task.name):
                outcomes.append(Outcome(task.name, KEPT, self._trained_by(task.name)))
                continue
            encoder = self.catalog.encoder()
            if stopped_by or (encoder is None and index > 0):
                reason = stopped_by or "waits for the first task, which trains the shared encoder"
                outcomes.append(Outcome(task.name, SKIPPED, reason=reason))
                continue
            serving = match_sites(task, sites)
            served = served or bool(serving)
            planned = (
                tuple(task.sites) if task.sites is not None else tuple(s.name for s in serving)
            )
            if len(serving) < task.section.min_sites:
                reason = f"{len(serving)} site(s) present, needs {task.section.min_sites}"
                log.warning("%s: %s; skipped in this run", task.name, reason)
                outcomes.append(Outcome(task.name, SKIPPED, planned=planned, reason=reason))
                continue
            if encoder is None:
                torch.manual_seed(self.plan.training.seed)
                encoder = Encoder(self.plan.encoder)
            run = TaskRun(self.plan, task, self.catalog, self.federation, tuple(serving))
            state = TaskState(encoder, initial_decoder(self.plan, task))
            try:
                for step in lifecycle(task, index == 0):
                    state = run.run(step, state)
            except Exception as error:  # reported in the summary, then raised as incomplete
                log.exception("%s: stopped", task.name)
                reason = f"{type(error).__name__}: {error}"[:MAX_REASON_CHARS]
                outcomes.append(Outcome(task.name, FAILED, planned=planned, reason=reason))
                stopped_by = f"not started: {task.name} failed"
                continue
            trained = self._trained_by(task.name)
            lost = [s for s in planned if s not in trained]
            status = PARTIAL if lost else TRAINED
            reason = f"without {', '.join(lost)}" if lost else ""
            outcomes.append(Outcome(task.name, status, trained, planned, reason))
        return outcomes, served

    def _trained_by(self, task: str) -> tuple[str, ...]:
        """The sites of a task's latest version in the catalog."""
        for entry in self.catalog.tasks():
            if entry["name"] == task:
                return tuple(entry["versions"][-1]["provenance"].get("sites", ()))
        return ()
