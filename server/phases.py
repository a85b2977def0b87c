"""The phases of a task's lifecycle, each a unit that the orchestrator runs in order.

A phase is a template method: :meth:`PhaseStep.run` skips a phase the journal records as
finished (restoring its output), otherwise journals its start, executes it, keeps its
output and journals its end. New phases (search and distill in ``server/trimming.py``,
calibrate in ``server/calibration.py``) are subclasses inserted into the lifecycle.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict

from core.evaluation import ScoreSums
from core.merge import Calibration
from core.model import Decoder, Encoder, Genotype
from core.model.cost import genotype_parameters
from core.payload import state_to_record
from core.protocol import CONFIG, DECODER, ENCODER, EVALUATE, METRICS, TRAIN, RoundConfig
from core.training import Phase
from server.aggregate import Averaged, fedavg
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
    genotype: Genotype | None = None  # the searched student's architecture
    calibration: Calibration = field(default_factory=Calibration)
    metrics: dict[str, Any] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def round_config(
        self,
        phase: str,
        rnd: int,
        steps: int = 0,
        rounds: int = 1,
        genotype: Genotype | None = None,
    ) -> RoundConfig:
        """The settings every site gets for round ``rnd`` of ``rounds`` of ``phase``."""
        frozen = self.encoder.frozen
        return RoundConfig(
            task=self.task.name,
            phase=phase,
            structures=self.task.structures,
            genotype=genotype or self.decoder.genotype,
            encoder=self.encoder.config,
            encoder_sha256=self.encoder.weights_sha256() if frozen else "",
            preprocessing=self.plan.preprocessing,
            patch=self.plan.patch,
            steps=steps,
            lr=self.task.lr,
            batch_size=self.plan.batch_size,
            schedule_start=(rnd - 1) * steps,
            schedule_total=rounds * steps,
            seed=self.plan.seed,
            val_fraction=self.plan.val_fraction,
            round=rnd,
            budget_params=self.budget(),
            kd_weight=self.task.kd_weight,
            temperature=self.task.temperature,
        )

    def budget_reference(self) -> int:
        """Parameters of the task's full (teacher) decoder."""
        widths = self.plan.encoder.widths
        return genotype_parameters(
            widths, Genotype.teacher(len(widths) - 1), len(self.task.structures)
        )

    def budget(self) -> int:
        """The student's size budget in parameters: a share of the teacher decoder's."""
        return int(self.task.size_budget * self.budget_reference())

    def contents(
        self, cfg: RoundConfig, send_encoder: bool, records: Mapping[str, ArrayRecord] | None = None
    ) -> dict[int, RecordDict]:
        """One message per site: the config, ``records`` (default: the decoder), the encoder.

        A trainable encoder travels every round (fp16); the frozen one travels once per
        site in fp32, to sites that have not cached it.
        """
        records = (
            records
            if records is not None
            else {DECODER: state_to_record(self.decoder.state_dict())}
        )
        out, sha, encoder = {}, cfg.encoder_sha256, None
        for site in self.sites:
            content = RecordDict({CONFIG: cfg.to_record(), **records})
            if send_encoder or (sha and sha not in site.encoders):
                encoder = encoder or state_to_record(self.encoder.state_dict(), fp16=not sha)
                content[ENCODER] = encoder
            out[site.node_id] = content
            sent = sum(r.count_bytes() for r in content.array_records.values())
            self.bytes_down[site.name] = self.bytes_down.get(site.name, 0) + sent
        return out

    def federated_round(
        self,
        phase: str,
        rnd: int,
        rounds: int,
        steps: int,
        records: Mapping[str, ArrayRecord],
        templates: Mapping[str, Mapping[str, torch.Tensor]],
        genotype: Genotype | None = None,
    ) -> Averaged:
        """One round of ``train.<phase>`` at every site, checked and averaged."""
        cfg = self.round_config(phase, rnd, steps, rounds, genotype)
        send_encoder = not self.encoder.frozen
        contents = self.contents(cfg, send_encoder, records)
        replies = self.federation.exchange(
            f"{TRAIN}.{phase}", contents, self.sites, f"{self.task.name}/{phase}/{rnd}"
        )
        self.received(replies, cfg)
        expected = cfg.encoder_sha256 or None
        avg = fedavg(replies, templates, expected, self.task.min_sites, self.plan.max_payload_bytes)
        for site, size in avg.bytes_up.items():
            self.bytes_up[site] = self.bytes_up.get(site, 0) + size
        self.rejected.update(avg.rejected)
        log.info(
            "%s/%s round %d/%d: loss %s from %s, rejected %s",
            self.task.name,
            phase,
            rnd,
            rounds,
            avg.loss,
            avg.sites,
            list(avg.rejected),
        )
        return avg

    def received(self, replies: list[Reply], cfg: RoundConfig) -> None:
        """Note which sites now cache the frozen encoder."""
        for reply in replies:
            if reply.content is not None and cfg.encoder_sha256:
                reply.site.encoders.add(cfg.encoder_sha256)

    def phase_end(self, phase: str) -> dict[str, Any]:
        """The journal's record of a finished phase of this task."""
        return next(
            e
            for e in reversed(self.catalog.events())
            if e["event"] == "phase-end" and e["task"] == self.task.name and e.get("phase") == phase
        )


class PhaseStep(ABC):
    """One phase of a task: skipped when finished before, else run and recorded."""

    name: str

    def run(self, job: TaskJob) -> None:
        """Run the phase unless the journal records it as finished."""
        catalog, task = job.catalog, job.task.name
        if catalog.phase_done(task, self.name):
            log.info("%s/%s: finished before, restoring its output", task, self.name)
            end = job.phase_end(self.name)
            job.bytes_up, job.bytes_down = dict(end["bytes_up"]), dict(end["bytes_down"])
            job.rejected = dict(end["rejected"])
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
            bytes_up=job.bytes_up,
            bytes_down=job.bytes_down,
            rejected=job.rejected,
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
            templates[ENCODER] = job.encoder.state_dict()
        losses = []
        for rnd in range(1, job.task.rounds + 1):
            records = {DECODER: state_to_record(job.decoder.state_dict())}
            avg = job.federated_round(
                self.name, rnd, job.task.rounds, job.task.local_steps, records, templates
            )
            job.decoder.load_state_dict(avg.states[DECODER])
            if self.with_encoder:
                job.encoder.load_state_dict(avg.states[ENCODER])
            losses.append(avg.loss)
        state = {f"decoder.{k}": v for k, v in job.decoder.state_dict().items()}
        job.catalog.save_checkpoint(job.task.name, self.name, state, {"losses": losses})
        if self.with_encoder:
            job.catalog.set_encoder(job.encoder, job.plan.preprocessing, job.plan.patch)
        return {"losses": losses}

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
        job.metrics = dict(job.phase_end(self.name).get("metrics", {}))


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
                "search_rounds": job.task.search_rounds if job.task.trim else 0,
                "distill_rounds": job.task.distill_rounds if job.task.trim else 0,
                "calibrate_rounds": job.task.calibrate_rounds if job.task.calibrate else 0,
                "teacher_parameters": job.budget_reference(),
                "bytes_up": job.bytes_up,
                "bytes_down": job.bytes_down,
                "rejected": job.rejected,
            }
            dice = job.metrics.get("dice", {})
            skill = {s: float(v) for s, v in dice.items() if v is not None}
            calibration = dataclasses.replace(job.calibration, skill=skill)
            job.catalog.register(job.task.name, job.decoder, job.metrics, provenance, calibration)
        bundle = job.catalog.export_bundle()
        return {"bundle": str(bundle.parent)}


def initial_decoder(plan: Plan, task: TaskPlan) -> Decoder:
    """A fresh full-width (teacher) decoder for a task, seeded by the plan."""
    torch.manual_seed(plan.seed + sum(map(ord, task.name)))
    return Decoder(
        plan.encoder.widths, Genotype.teacher(len(plan.encoder.widths) - 1), task.structures
    )
