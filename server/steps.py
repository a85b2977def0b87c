"""Running a task's steps on the server: the template method, the round, the registration.

A step (a phase from ``core.phases``, or :class:`Registration`) is run by
:meth:`TaskRun.run`: skipped when the journal records it as finished (its output is
restored from its checkpoint or journal entry), otherwise journalled at its start, executed
and journalled at its end. Steps pass an immutable ``TaskState`` along; :class:`TaskRun`
offers them federated rounds (messages, exchange, checks, averaging, byte counting) and
the catalog's checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from flwr.app import ArrayRecord, RecordDict

from core.model import Decoder, Encoder, Genotype
from core.model.cost import genotype_parameters
from core.phases import PHASES
from core.phases.spec import PhaseSettings, PhaseSpec, RoundResult, TaskState
from core.protocol import PRIVACY, RoundConfig, SiteReply
from server.aggregate import RoundFailed, aggregate
from server.catalog import Catalog
from server.federation import Federation, Reply, SiteInfo
from server.messages import Ledger, array_bytes, round_messages
from server.plan import Plan, TaskPlan
from server.rounds import KeptRound, RoundStore, fingerprint
from server.server_optimizer import ServerOptimizer

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # how often a round short of sites looks for the planned ones
ROUND_TRIES = 3  # a round is sent at most this often while sites come back
ROUND_BASE_SECONDS = 120.0  # start-up, data loading and caching at a site
SECONDS_PER_STEP = 10.0  # ~10x a CPU step of the default network (NOTES: 0.3-1 s)
EVALUATE_SECONDS = 900.0  # sliding-window validation of a site's cases

S = TypeVar("S", bound=PhaseSettings)
R = TypeVar("R", bound=SiteReply)


class Step(Protocol):
    """What :meth:`TaskRun.run` runs: a phase, or a server-only step."""

    @property
    def name(self) -> str:
        """The step's name in the journal."""

    def execute(self, steps: Any, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Do the step; the new state and a JSON summary."""

    def restore(self, steps: Any, state: TaskState, summary: Mapping[str, Any]) -> TaskState:
        """The state after the step, from what it kept."""


@dataclass
class TaskRun:
    """One task's run on the server: its plan, sites, catalog and traffic ledger."""

    plan: Plan
    task: TaskPlan
    catalog: Catalog
    federation: Federation
    sites: tuple[SiteInfo, ...]
    ledger: Ledger = field(default_factory=Ledger)
    optimizers: dict[str, ServerOptimizer] = field(default_factory=dict)  # phase -> its own
    planned: tuple[SiteInfo, ...] = ()
    """The sites the task started with; one that left may rejoin (default: ``sites``)."""

    def __post_init__(self) -> None:
        self.planned = self.planned or self.sites

    # -- sites that leave and come back --------------------------------------------------
    def readmit(self, group: str) -> None:
        """Take back every planned site that left and whose node is online again.

        A SuperNode that restarts, or whose link comes back, keeps its node id (its id is
        its registered key's), so it is the same site as before.
        """
        if len(self.sites) == len(self.planned):
            return
        online = self.federation.online_node_ids()
        back = [s for s in self.planned if s not in self.sites and s.node_id in online]
        if back:
            names = [s.name for s in back]
            log.info("%s: %s online again: rejoin at %s", self.task.name, names, group)
            self.catalog.journal("sites-rejoined", self.task.name, sites=names, at=group)
            self.sites = tuple(s for s in self.planned if s in self.sites or s in back)

    def wait_for_sites(self, group: str, failure: RoundFailed) -> bool:
        """After a round short of usable replies: wait for enough planned sites.

        Polls until at least ``min_sites`` of the planned sites are online, for at most the
        plan's ``rejoin_grace_s``; returns whether the round may be sent again.
        """
        grace = self.plan.training.rejoin_grace_s
        wanted = self.task.section.min_sites
        log.warning("%s: %s; waiting up to %.0f s for sites to return", group, failure, grace)
        deadline = time.monotonic() + grace
        while True:
            online = self.federation.online_node_ids()
            if sum(s.node_id in online for s in self.planned) >= wanted:
                return True
            if time.monotonic() + POLL_SECONDS > deadline:
                return False
            time.sleep(POLL_SECONDS)

    def _send(
        self,
        message_type: str,
        contents: Mapping[int, RecordDict],
        cfg: RoundConfig,
        group: str,
        timeout: float,
    ) -> tuple[list[Reply], dict[str, str]]:
        """Send a round's messages; the replies, and the sites that left (with why)."""
        for site in self.sites:
            self.ledger.sent(site.name, array_bytes(contents[site.node_id]))
        replies = self.federation.exchange(message_type, contents, list(self.sites), group, timeout)
        for reply in replies:
            if reply.content is not None and cfg.encoder_sha256:
                reply.site.encoders.add(cfg.encoder_sha256)
        gone = {r.site.name: r.error or "no reply" for r in replies if r.content is None}
        if gone:  # dropped out, hung past the timeout or failed: until they are back
            log.warning("%s: %s left the task: %s", self.task.name, gone, group)
            self.sites = tuple(s for s in self.sites if s.name not in gone)
        return replies, gone

    # -- ServerSteps ---------------------------------------------------------------------
    def settings(self, phase: PhaseSpec[S, Any]) -> S:
        """The task's settings of ``phase``."""
        return self.task.of(phase)

    def round_config(
        self,
        phase: str,
        rnd: int,
        rounds: int,
        encoder: Encoder,
        decoder: Decoder,
        genotype: Genotype,
    ) -> RoundConfig:
        """What every site is told for round ``rnd`` of ``rounds`` of ``phase``.

        A decoder of another task (a peer round, ``server.peers``) is scored on the
        task's own dataset: the config names both structure lists.
        """
        own = decoder.structures == self.task.structures
        return RoundConfig(
            task=self.task.name,
            phase=phase,
            structures=decoder.structures,
            labels=() if own else self.task.structures,
            genotype=genotype,
            encoder=encoder.config,
            preprocessing=self.plan.preprocessing,
            patch=self.plan.patch,
            encoder_sha256=encoder.weights_sha256() if encoder.frozen else "",
            optimiser=self.task.optimiser,
            batch_size=self.plan.training.batch_size,
            seed=self.plan.training.seed,
            val_fraction=self.plan.training.val_fraction,
            round=rnd,
            rounds=rounds,
            precision=self.plan.training.precision,
            partial_labels=self.task.section.partial_labels,
            privacy=self.task.privacy,
        )

    def federated_round(
        self,
        phase: PhaseSpec[Any, R],
        state: TaskState,
        rnd: int,
        rounds: int,
        records: Mapping[str, ArrayRecord],
        templates: Mapping[str, Mapping[str, torch.Tensor]],
        genotype: Genotype | None = None,
    ) -> RoundResult[R]:
        """One round of ``phase`` at every site, checked and averaged.

        The round's encoder is ``state``'s (it travels if trainable or not cached), its
        genotype ``genotype`` or else ``state``'s decoder's.
        """
        cfg = self.round_config(
            phase.name,
            rnd,
            rounds,
            state.encoder,
            state.decoder,
            genotype or state.decoder.genotype,
        )
        keep = rnd < rounds  # the last round's outcome is the phase's own checkpoint
        given = fingerprint(cfg, self.task.of(phase).to_json(), templates) if keep else ""
        kept = self.kept_rounds.load(phase, rnd, given) if keep else None
        if kept is not None:
            return self._take_kept(phase, rnd, rounds, kept)
        settings = phase.settings_record(self.task.of(phase))
        group = f"{self.task.name}/{phase.name}/{rnd}"
        timeout = round_timeout(self.task.of(phase))
        for attempt in range(1, ROUND_TRIES + 1):
            self.readmit(group)
            contents = round_messages(cfg, settings, records, self.sites, state.encoder)
            replies, gone = self._send(phase.message_type, contents, cfg, group, timeout)
            partial = self.task.section.partial_labels
            described = {s.name: s.cases_for(self.task.structures, partial) for s in self.sites}
            try:
                result = aggregate(
                    replies,
                    phase,
                    cfg,
                    templates,
                    described,
                    self.task.aggregation,
                    self.task.section.min_sites,
                    self.plan.max_payload_bytes,
                )
                break
            except RoundFailed as failure:
                if attempt == ROUND_TRIES or not self.wait_for_sites(group, failure):
                    raise
                self.catalog.journal("round-retry", self.task.name, at=group, left=gone)
        if phase.server_optimized:
            if rnd == 1:  # the server's momentum belongs to one phase's rounds
                self.optimizers[phase.name] = ServerOptimizer(self.task.aggregation)
            optimizer = self.optimizers[phase.name]
            states = {k: optimizer.step(k, templates[k], v) for k, v in result.states.items()}
            result = dataclasses.replace(result, states=states)
        self.ledger.received(result.bytes_up, result.rejected)
        self.ledger.spent({site: r.epsilon for site, r in result.replies.items()})
        if keep:
            server = self.optimizers[phase.name].state() if phase.server_optimized else {}
            self.kept_rounds.save(phase.name, rnd, given, result, self.ledger, server)
        self.catalog.journal(
            "round-end",
            self.task.name,
            phase=phase.name,
            round=rnd,
            rounds=rounds,
            sites=list(result.replies),
            rejected=list(result.rejected),
            left=gone,
            loss=result.loss,
            clipped=dict(result.clipped),
        )
        log.info(
            "%s/%s round %d/%d: loss %s from %s, rejected %s",
            self.task.name,
            phase.name,
            rnd,
            rounds,
            result.loss,
            list(result.replies),
            list(result.rejected),
        )
        return result

    @property
    def kept_rounds(self) -> RoundStore:
        """The task's finished rounds of the phase in flight."""
        return RoundStore(self.catalog, self.task.name)

    def _take_kept(
        self, phase: PhaseSpec[Any, R], rnd: int, rounds: int, kept: KeptRound
    ) -> RoundResult[R]:
        """A round finished by an earlier run: its outcome, ledger and server optimiser."""
        self.ledger = kept.ledger
        if phase.server_optimized:
            optimizer = ServerOptimizer(self.task.aggregation)
            for key, tensors in kept.optimizer.items():
                optimizer.restore(key, kept.result.states[key], tensors)
            self.optimizers[phase.name] = optimizer
        self.catalog.journal(
            "round-restored", self.task.name, phase=phase.name, round=rnd, rounds=rounds
        )
        log.info(
            "%s/%s round %d/%d: finished before, taken as kept",
            self.task.name,
            phase.name,
            rnd,
            rounds,
        )
        return kept.result

    def save_checkpoint(
        self, phase: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> None:
        """Keep a phase's output in the catalog."""
        self.catalog.save_checkpoint(self.task.name, phase, dict(state), dict(meta))

    def load_checkpoint(self, phase: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A finished phase's output."""
        return self.catalog.load_checkpoint(self.task.name, phase)

    def store_encoder(self, encoder: Encoder) -> Encoder:
        """Freeze and keep the shared encoder."""
        self.catalog.set_encoder(encoder, self.plan.preprocessing, self.plan.patch)
        return encoder

    def stored_encoder(self) -> Encoder:
        """The frozen shared encoder from the catalog."""
        encoder = self.catalog.encoder()
        if encoder is None:
            raise RuntimeError("the base phase finished without storing its encoder")
        return encoder

    # -- the template method -------------------------------------------------------------
    def run(self, step: Step, state: TaskState) -> TaskState:
        """Run ``step`` unless the journal records it as finished; returns the new state."""
        task = self.task.name
        end = self.catalog.phase_end(task, step.name)
        if end is not None:
            log.info("%s/%s: finished before, restoring its output", task, step.name)
            self.ledger = Ledger.from_json(end)
            return step.restore(self, state, end)
        sites = [s.name for s in self.sites]
        self.catalog.journal("phase-start", task, phase=step.name, sites=sites)
        start = time.perf_counter()
        state, summary = step.execute(self, state)
        self.kept_rounds.drop(step.name)
        seconds = round(time.perf_counter() - start, 2)
        self.catalog.journal(
            "phase-end", task, phase=step.name, seconds=seconds, **self.ledger.to_json(), **summary
        )
        log.info("%s/%s: done %s", task, step.name, summary)
        return state

    def phase_end(self, phase: str) -> dict[str, Any]:
        """The journal's record of a finished phase of this task."""
        end = self.catalog.phase_end(self.task.name, phase)
        if end is None:
            raise KeyError(f"{self.task.name}/{phase}: not finished in the journal")
        return end


def round_timeout(settings: PhaseSettings) -> float:
    """How long a round waits for its sites: a fixed allowance plus a generous time per step.

    A site that hangs is dropped from the round after this, and the round completes with
    the rest if the task's minimum remains.
    """
    steps = settings.steps
    return ROUND_BASE_SECONDS + SECONDS_PER_STEP * steps if steps else EVALUATE_SECONDS


def teacher_parameters(plan: Plan, task: TaskPlan) -> int:
    """Parameters of a task's full (teacher) decoder."""
    widths = plan.encoder.widths
    return genotype_parameters(widths, Genotype.teacher(len(widths) - 1), len(task.structures))


class Registration:
    """Store the decoder as the task's next version and export the unified bundle."""

    name = "register"

    def __init__(self, phases: list[str]) -> None:
        self.phases = phases

    def execute(self, run: TaskRun, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Register (once) and export."""
        task = run.task
        if not run.catalog.has_task(task.name):
            settings = {name: task.of(PHASES[name]) for name in self.phases}
            rounds = {name: s.rounds for name, s in settings.items() if s.steps}
            provenance = {
                "sites": [s.name for s in run.sites],
                "rounds": rounds,
                "teacher_parameters": teacher_parameters(run.plan, task),
                **run.ledger.to_json(),
            }
            if task.privacy.on:  # a DP task's spent (epsilon, delta) per site, over its phases
                provenance[PRIVACY] = {"delta": task.privacy.delta, "epsilon": run.ledger.epsilon}
            dice = state.metrics.get("dice", {})
            skill = {s: float(v) for s, v in dice.items() if v is not None}
            calibration = dataclasses.replace(state.calibration, skill=skill)
            run.catalog.register(
                task.name, state.decoder, dict(state.metrics), provenance, calibration
            )
        bundle = run.catalog.export_bundle()
        return state, {"bundle": str(bundle.parent)}

    def restore(self, run: TaskRun, state: TaskState, summary: Mapping[str, Any]) -> TaskState:
        """Nothing to restore: the catalog holds the registered decoder."""
        return state
