"""The ``distill`` phase: federated knowledge distillation of the teacher into the student.

The server sends the teacher and the student (the searched genotype, starting from the
teacher's weights); sites train the student from labels and the teacher's soft
predictions; the server averages the students. The teacher is then dropped: only the
student is calibrated, evaluated and registered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import RecordDict

from core.local.distill import distill_phase
from core.model import ContinualSegmenter, Decoder, Genotype
from core.model.inherit import inherit
from core.payload import record_to_state, state_to_record
from core.phases.spec import (
    TRAIN,
    PhaseSettings,
    PhaseSpec,
    RoundPrivacy,
    ServerSteps,
    SiteResources,
    TaskState,
    reply,
    tail_mean,
    training_cases,
)
from core.protocol import DECODER, ENCODER, TEACHER, RoundConfig, SiteReply
from core.records import setting


@dataclass(frozen=True)
class DistillSettings(PhaseSettings):
    """Distillation rounds and steps, and the KD term's weight and temperature."""

    rounds: int = setting(
        3,
        lo=1,
        hi=1000,
        key="distill_rounds",
        fallback="rounds",
        doc="rounds of distilling the student",
    )
    steps: int = setting(
        50,
        lo=1,
        hi=100_000,
        key="distill_steps",
        fallback="local_steps",
        doc="local steps per distillation round",
    )
    kd_weight: float = setting(
        1.0, lo=0.0, hi=100.0, doc="weight of the distillation loss against the labels' loss"
    )
    temperature: float = setting(
        2.0, lo=0.1, hi=100.0, doc="softening of the teacher's and student's logits"
    )


@dataclass(frozen=True)
class DistillReply(SiteReply):
    """A site's distillation round: also the KD term of the loss."""

    kd_loss: float = setting(0.0, lo=0.0, hi=1e6)


class Distill(PhaseSpec[DistillSettings, DistillReply]):
    """Train the searched student from labels and the teacher."""

    name = "distill"
    message_type = f"{TRAIN}.distill"
    settings_type = DistillSettings
    reply_type = DistillReply
    server_optimized = True

    def at_site(
        self, site: SiteResources, cfg: RoundConfig, settings: DistillSettings, content: RecordDict
    ) -> RecordDict:
        """Train the student (``cfg.genotype``) one round; reply its weights."""
        dataset, train = training_cases(site, cfg)
        encoder = site.encoder(cfg.encoder_sha256, cfg.encoder, content.array_records.get(ENCODER))
        widths = cfg.encoder.widths
        teacher = Decoder(widths, Genotype.teacher(len(widths) - 1), cfg.structures)
        teacher.load_state_dict(
            record_to_state(
                content.array_records[TEACHER], teacher.state_dict(), f"{site.name}: teacher"
            )
        )
        student = Decoder(widths, cfg.genotype, cfg.structures)
        student.load_state_dict(
            record_to_state(
                content.array_records[DECODER], student.state_dict(), f"{site.name}: student"
            )
        )
        model = ContinualSegmenter(encoder)
        model.add_decoder(cfg.task, teacher)
        privacy = RoundPrivacy(site, cfg)
        result = distill_phase(
            model,
            cfg.task,
            student,
            dataset.labels,
            train,
            cfg.preprocessing,
            cfg.train_settings(settings.steps),
            settings.kd_weight,
            settings.temperature,
            privacy.settings,
            privacy.account,
        )
        loss = privacy.public(tail_mean(result.losses, last=5))
        kd = privacy.public(tail_mean(result.kd_losses, last=5))
        metrics = DistillReply(len(train), loss, result.seconds, privacy.epsilon, kd)
        return reply(cfg, metrics, {DECODER: state_to_record(student.state_dict())})

    def _student(self, state: TaskState) -> Decoder:
        if state.genotype is None:
            raise ValueError("distillation needs the searched genotype")
        return Decoder(state.encoder.config.widths, state.genotype, state.decoder.structures)

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Train the student over rounds; it then replaces the teacher.

        The student starts from the teacher's weights (the first channels of each layer),
        which distillation on a CPU budget needs: a student from scratch lags far behind.
        """
        settings = steps.settings(self)
        student = inherit(self._student(state), state.decoder)
        teacher = {TEACHER: state_to_record(state.decoder.state_dict())}
        losses = []
        for rnd in range(1, settings.rounds + 1):
            records = {**teacher, DECODER: state_to_record(student.state_dict())}
            templates = {DECODER: student.state_dict()}
            result = steps.federated_round(
                self, state, rnd, settings.rounds, records, templates, student.genotype
            )
            student.load_state_dict(result.states[DECODER])
            losses.append(result.loss)
        meta = {"genotype": student.genotype.to_json(), "losses": losses}
        steps.save_checkpoint(self.name, student.state_dict(), meta)
        return dataclasses.replace(state, decoder=student), meta

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """Reload the distilled student in place of the teacher."""
        saved, meta = steps.load_checkpoint(self.name)
        state = dataclasses.replace(state, genotype=Genotype.from_json(meta["genotype"]))
        student = self._student(state)
        student.load_state_dict(saved)
        return dataclasses.replace(state, decoder=student)
