"""The ``base`` and ``teacher`` phases: FedAvg rounds of local training of a full decoder.

``base`` (first task only) trains the shared encoder with the task's decoder; both travel
every round (fp16) and are averaged. ``teacher`` (every later task) trains a new full
decoder on the frozen encoder; only the decoder travels back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from flwr.app import RecordDict

from core.local.training import train_phase
from core.payload import state_to_record
from core.phases.spec import (
    TRAIN,
    PhaseSettings,
    PhaseSpec,
    RoundPrivacy,
    ServerSteps,
    SiteResources,
    TaskState,
    load_model,
    reply,
    tail_mean,
    training_cases,
)
from core.protocol import DECODER, ENCODER, RoundConfig, SiteReply
from core.records import setting


@dataclass(frozen=True)
class TrainingSettings(PhaseSettings):
    """A task's training rounds (plan keys ``rounds``, ``local_steps``, ``proximal_mu``)."""

    rounds: int = setting(3, lo=1, hi=1000, doc="FedAvg rounds")
    steps: int = setting(50, lo=1, hi=100_000, key="local_steps", doc="local steps per round")
    proximal_mu: float = setting(0.0, lo=0.0, hi=10.0, doc="FedProx: pull to the round's model")


class Training(PhaseSpec[TrainingSettings, SiteReply]):
    """Local training rounds averaged by FedAvg; ``base`` also trains the encoder."""

    settings_type = TrainingSettings
    reply_type = SiteReply
    server_optimized = True
    with_encoder: ClassVar[bool]

    def at_site(
        self, site: SiteResources, cfg: RoundConfig, settings: TrainingSettings, content: RecordDict
    ) -> RecordDict:
        """Train one round on the site's training split; reply the weights.

        Under DP the site first counts the round in its ledger (raises, and trains nothing,
        past its budget), and replies its spent epsilon instead of its loss.
        """
        dataset, train = training_cases(site, cfg)
        privacy = RoundPrivacy(site, cfg)
        model = load_model(site, cfg, content, trainable_encoder=self.with_encoder)
        result = train_phase(
            model,
            cfg.task,
            dataset.labels,
            train,
            [],
            cfg.preprocessing,
            cfg.train_settings(settings.steps),
            train_encoder=self.with_encoder,
            proximal_mu=settings.proximal_mu,
            partial=cfg.partial_labels,
            privacy=privacy.settings,
            account=privacy.account,
        )
        arrays = {DECODER: state_to_record(model.decoder(cfg.task).state_dict())}
        if self.with_encoder:
            arrays[ENCODER] = state_to_record(model.encoder.state_dict())
        loss = privacy.public(tail_mean(result.losses))
        metrics = SiteReply(len(train), loss, result.seconds, privacy.epsilon)
        return reply(cfg, metrics, arrays)

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Run the rounds; keep the averaged decoder (and encoder, in ``base``)."""
        settings = steps.settings(self)
        losses: list[float | None] = []
        for rnd in range(1, settings.rounds + 1):
            templates = {DECODER: state.decoder.state_dict()}  # what this round sends
            if self.with_encoder:
                templates[ENCODER] = state.encoder.state_dict()
            records = {DECODER: state_to_record(templates[DECODER])}
            result = steps.federated_round(self, state, rnd, settings.rounds, records, templates)
            state = state.with_decoder_state(result.states[DECODER])
            if self.with_encoder:
                encoder = copy.deepcopy(state.encoder)
                encoder.load_state_dict(result.states[ENCODER])
                state = replace(state, encoder=encoder)
            losses.append(result.loss)
        decoder = {f"{DECODER}.{k}": v for k, v in state.decoder.state_dict().items()}
        summary: dict[str, Any] = {"losses": losses}
        steps.save_checkpoint(self.name, decoder, summary)
        if self.with_encoder:
            state = replace(state, encoder=steps.store_encoder(state.encoder))
        return state, summary

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """Reload the averaged decoder (and, after ``base``, the frozen encoder)."""
        saved, _ = steps.load_checkpoint(self.name)
        state = state.with_decoder_state(checkpoint_decoder(saved))
        if self.with_encoder:
            state = replace(state, encoder=steps.stored_encoder())
        return state


def checkpoint_decoder(saved: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's state dict in a training phase's checkpoint (its ``decoder.`` keys)."""
    prefix = f"{DECODER}."
    return {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}


class Base(Training):
    """First task: the encoder learns with the decoder, then is frozen for good."""

    name = "base"
    message_type = f"{TRAIN}.base"
    with_encoder = True


class Teacher(Training):
    """Later tasks: a full decoder on the frozen encoder."""

    name = "teacher"
    message_type = f"{TRAIN}.teacher"
    with_encoder = False
