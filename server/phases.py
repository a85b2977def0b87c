"""The phases of a task's lifecycle, each a unit that the orchestrator runs in order.

A phase is a template method: :meth:`PhaseStep.run` skips a phase the journal records as
finished (restoring its output), otherwise journals its start, executes it, keeps its
output and journals its end. New phases (search, distill, calibrate) are new subclasses
inserted into the lifecycle; no other phase changes.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import RecordDict

from core.evaluation import ScoreSums
from core.model import Decoder, Encoder, Genotype
from core.payload import state_to_record
from core.protocol import CONFIG, DECODER, ENCODER, EVALUATE, METRICS, TRAIN, RoundConfig
from core.training import Phase
from server.aggregate import fedavg
from server.catalog import Catalog
from server.federation import Federation, Reply, SiteInfo
from server.plan import Plan, TaskPlan

log = logging.getLogger(__name__)


@dataclass
class TaskJob:
    """Everything a task's phases share: the plan, the sites, the model so far, the record."""

    plan: Plan
    task: TaskPlan
    catalog: Catalog
    federation: Federation
    sites: list[SiteInfo]
    encoder: Encoder
    decoder: Decoder
    metrics: dict[str, Any] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def round_config(self, phase: str, rnd: int, steps: int = 0) -> RoundConfig:
        """The settings every site gets for round ``rnd`` of ``phase``."""
        frozen = self.encoder.frozen
        return RoundConfig(
            task=self.task.name,
            phase=phase,
            structures=self.task.structures,
            genotype=self.decoder.genotype,
            encoder=self.encoder.config,
            encoder_sha256=self.encoder.weights_sha256() if frozen else "",
            preprocessing=self.plan.preprocessing,
            patch=self.plan.patch,
            steps=steps,
            lr=self.task.lr,
            batch_size=self.plan.batch_size,
            schedule_start=(rnd - 1) * steps,
            schedule_total=self.task.rounds * steps,
            seed=self.plan.seed,
            val_fraction=self.plan.val_fraction,
            round=rnd,
        )

    def contents(self, cfg: RoundConfig, send_encoder: bool) -> dict[int, RecordDict]:
        """One message per site: config and decoder, and the encoder where it is needed.

        A trainable encoder travels every round (fp16); the frozen one travels once per
        site in fp32, to sites that have not cached it.
        """
        decoder = state_to_record(self.decoder.state_dict())
        out = {}
        for site in self.sites:
            content = RecordDict({CONFIG: cfg.to_record(), DECODER: decoder})
            sha = cfg.encoder_sha256
            if send_encoder or (sha and sha not in site.encoders):
                content[ENCODER] = state_to_record(self.encoder.state_dict(), fp16=not sha)
            out[site.node_id] = content
            sent = sum(r.count_bytes() for r in content.array_records.values())
            self.bytes_down[site.name] = self.bytes_down.get(site.name, 0) + sent
        return out

    def received(self, replies: list[Reply], cfg: RoundConfig) -> None:
        """Note which sites now cache the frozen encoder."""
        for reply in replies:
            if reply.content is not None and cfg.encoder_sha256:
                reply.site.encoders.add(cfg.encoder_sha256)


class PhaseStep(ABC):
    """One phase of a task: skipped when finished before, else run and recorded."""

    name: str

    def run(self, job: TaskJob) -> None:
        """Run the phase unless the journal records it as finished."""
        catalog, task = job.catalog, job.task.name
        if catalog.phase_done(task, self.name):
            log.info("%s/%s: finished before, restoring its output", task, self.name)
            self.restore(job)
            return
        catalog.journal("phase-start", task, phase=self.name, sites=[s.name for s in job.sites])
        start = time.perf_counter()
        summary = self.execute(job)
        catalog.journal(
            "phase-end",
            task,
            phase=self.name,
            seconds=round(time.perf_counter() - start, 2),
            **summary,
        )
        log.info("%s/%s: done %s", task, self.name, summary)

    @abstractmethod
    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Do the phase and keep its output in the catalog; returns a JSON summary."""

    def restore(self, job: TaskJob) -> None:  # noqa: B027 (optional hook)
        """Put a finished phase's output back into the job (default: nothing to restore)."""


class FederatedTraining(PhaseStep):
    """FedAvg rounds of local training; ``base`` also averages the encoder."""

    def __init__(self, phase: Phase) -> None:
        self.name = str(phase)
        self.with_encoder = phase == Phase.BASE

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Run the rounds and keep the averaged weights."""
        templates = {DECODER: job.decoder.state_dict()}
        if self.with_encoder:
            templates["encoder"] = job.encoder.state_dict()
        losses = []
        for rnd in range(1, job.task.rounds + 1):
            cfg = job.round_config(self.name, rnd, job.task.local_steps)
            replies = job.federation.exchange(
                f"{TRAIN}.{self.name}",
                job.contents(cfg, self.with_encoder),
                job.sites,
                f"{job.task.name}/{self.name}/{rnd}",
            )
            job.received(replies, cfg)
            expected = None if self.with_encoder else cfg.encoder_sha256
            avg = fedavg(
                replies, templates, expected, job.task.min_sites, job.plan.max_payload_bytes
            )
            job.decoder.load_state_dict(avg.states[DECODER])
            if self.with_encoder:
                job.encoder.load_state_dict(avg.states[ENCODER])
            for site, size in avg.bytes_up.items():
                job.bytes_up[site] = job.bytes_up.get(site, 0) + size
            job.rejected.update(avg.rejected)
            losses.append(avg.loss)
            log.info(
                "%s/%s round %d: loss %s from %s, rejected %s",
                job.task.name,
                self.name,
                rnd,
                avg.loss,
                avg.sites,
                list(avg.rejected),
            )
        state = {f"decoder.{k}": v for k, v in job.decoder.state_dict().items()}
        if self.with_encoder:
            state |= {f"encoder.{k}": v for k, v in job.encoder.state_dict().items()}
        job.catalog.save_checkpoint(job.task.name, self.name, state, {"losses": losses})
        if self.with_encoder:
            job.catalog.set_encoder(job.encoder, job.plan.preprocessing, job.plan.patch)
        return {
            "losses": losses,
            "rejected": job.rejected,
            "bytes_up": job.bytes_up,
            "bytes_down": job.bytes_down,
        }

    def restore(self, job: TaskJob) -> None:
        """Reload the averaged decoder (and the frozen encoder after ``base``)."""
        state, _ = job.catalog.load_checkpoint(job.task.name, self.name)
        job.decoder.load_state_dict(
            {k[8:]: v for k, v in state.items() if k.startswith("decoder.")}
        )
        if self.with_encoder:
            encoder = job.catalog.encoder()
            assert encoder is not None, "the base phase finished without storing its encoder"
            job.encoder = encoder
        end = next(
            e
            for e in reversed(job.catalog.events())
            if e["event"] == "phase-end"
            and e["task"] == job.task.name
            and e.get("phase") == self.name
        )
        job.bytes_up, job.bytes_down = (
            dict(end.get("bytes_up", {})),
            dict(end.get("bytes_down", {})),
        )


class Evaluation(PhaseStep):
    """Per-structure Dice and HD95 on every site's validation cases, pooled."""

    name = "evaluate"

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Ask each site to evaluate the decoder; pool the sums."""
        cfg = job.round_config(self.name, 1)
        replies = job.federation.exchange(
            EVALUATE, job.contents(cfg, False), job.sites, f"{job.task.name}/{self.name}"
        )
        job.received(replies, cfg)
        pooled, cases = ScoreSums(), 0
        for reply in replies:
            if reply.content is None:
                log.warning("%s could not evaluate: %s", reply.site.name, reply.error)
                continue
            flat = {
                k: float(v)
                for k, v in reply.content.metric_records[METRICS].items()
                if isinstance(v, int | float)
            }
            pooled.merge(ScoreSums.from_flat(flat))
            cases += int(flat.get("num-examples", 0))
        job.metrics = {
            "dice": pooled.means("dice"),
            "hd95": pooled.means("hd95"),
            "validation_cases": cases,
        }
        return {"metrics": job.metrics}

    def restore(self, job: TaskJob) -> None:
        """Reload the pooled metrics from the journal."""
        end = next(
            e
            for e in reversed(job.catalog.events())
            if e["event"] == "phase-end"
            and e["task"] == job.task.name
            and e.get("phase") == self.name
        )
        job.metrics = dict(end.get("metrics", {}))


class Registration(PhaseStep):
    """Store the decoder as the task's next version and export the unified bundle."""

    name = "register"

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Register (once) and export."""
        if not job.catalog.has_task(job.task.name):
            provenance = {
                "sites": [s.name for s in job.sites],
                "rounds": job.task.rounds,
                "local_steps": job.task.local_steps,
                "bytes_up": job.bytes_up,
                "bytes_down": job.bytes_down,
                "rejected": job.rejected,
            }
            job.catalog.register(job.task.name, job.decoder, job.metrics, provenance)
        bundle = job.catalog.export_bundle()
        return {"bundle": str(bundle.parent)}


def lifecycle(first_task: bool) -> list[PhaseStep]:
    """The phases of a task in order: the first task trains the encoder too."""
    training = FederatedTraining(Phase.BASE if first_task else Phase.TEACHER)
    return [training, Evaluation(), Registration()]


def initial_decoder(plan: Plan, task: TaskPlan) -> Decoder:
    """A fresh full-width (teacher) decoder for a task, seeded by the plan."""
    torch.manual_seed(plan.seed + sum(map(ord, task.name)))
    return Decoder(
        plan.encoder.widths, Genotype.teacher(len(plan.encoder.widths) - 1), task.structures
    )
