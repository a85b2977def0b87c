"""What a phase is: its settings, its messages, its site procedure and its server step.

A phase module (``core/phases/<name>.py``) defines one :class:`PhaseSpec` subclass that
holds all of it, written against two small interfaces so that it lives in ``core``:
:class:`SiteResources` (what a hospital node offers: its data, its encoder cache) and
:class:`ServerSteps` (what the server offers: a checked, averaged federated round and
checkpoints). Server progress is immutable: a step takes a :class:`TaskState` and returns
a new one.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from core.data import Case, TaskDataset, split_cases, validation_count
from core.local.private import Account, Mechanism, Privacy, PrivacyLedger
from core.merge import Calibration
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from core.payload import record_to_state
from core.protocol import CONFIG, DECODER, ENCODER, ENCODER_SHA, METRICS, RoundConfig, SiteReply
from core.records import Record, flat, parse

S = TypeVar("S", bound="PhaseSettings")
R = TypeVar("R", bound=SiteReply)

TRAIN = "train"  # message category of the training phases: train.<phase>


@dataclass(frozen=True)
class PhaseSettings(Record):
    """The budget every phase's settings state: federated rounds and local steps per round.

    A phase with a budget declares both again as plan keys (:func:`core.records.setting`);
    one without (``evaluate``) runs one round of no local steps, and neither is a key.
    """

    rounds: int = field(default=1, metadata={"record": False})
    steps: int = field(default=0, metadata={"record": False})


@dataclass(frozen=True)
class NoSettings(PhaseSettings):
    """A phase without settings of its own."""


@dataclass(frozen=True)
class TaskState:
    """A task's progress on the server, passed from step to step, never edited in place.

    Attributes:
        encoder: the shared encoder (trainable only during ``base``).
        decoder: the task's current decoder (the teacher, then the student).
        genotype: the searched student's architecture, once searched.
        calibration: heads trained (and the domain fitted), once calibrated.
        metrics: pooled validation scores, once evaluated.
    """

    encoder: Encoder
    decoder: Decoder
    genotype: Genotype | None = None
    calibration: Calibration = field(default_factory=Calibration)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def with_decoder_state(self, state: Mapping[str, torch.Tensor]) -> TaskState:
        """A new state whose decoder is a copy of this one's with (part of) ``state`` loaded."""
        decoder = copy.deepcopy(self.decoder)
        decoder.load_state_dict({**self.decoder.state_dict(), **state})
        return dataclasses.replace(self, decoder=decoder)


@dataclass(frozen=True)
class RoundResult(Generic[R]):
    """One federated round after the checks: averaged states and the accepted replies.

    ``apart`` holds the phase's records that are kept apart, by accepted site.
    """

    states: Mapping[str, Mapping[str, torch.Tensor]]
    replies: Mapping[str, R]
    rejected: Mapping[str, str] = field(default_factory=dict)
    bytes_up: Mapping[str, int] = field(default_factory=dict)
    apart: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]] = field(default_factory=dict)
    clipped: Mapping[str, float] = field(default_factory=dict)
    """Sites whose update the server scaled down (by the smallest factor over the keys)."""

    @property
    def loss(self) -> float | None:
        """Mean loss weighted by examples (``None`` if no reply)."""
        total = sum(r.examples for r in self.replies.values())
        if not total:
            return None
        return sum(r.loss * r.examples for r in self.replies.values()) / total


class SiteResources(Protocol):
    """What a hospital node offers a phase: its name, data and private cache."""

    @property
    def name(self) -> str:
        """The site's name."""

    def dataset_for(self, structures: tuple[str, ...], partial: bool = False) -> TaskDataset:
        """The dataset that labels all of ``structures`` (``partial``: any of them)."""

    def encoder(self, sha: str, config: EncoderConfig, sent: ArrayRecord | None) -> Encoder:
        """The frozen encoder with this hash (from the message or the cache)."""

    def save_local(self, name: str, module: torch.nn.Module) -> None:
        """Keep a module's weights in the site's private cache."""

    def load_local(self, name: str, module: torch.nn.Module) -> bool:
        """Restore weights kept by :meth:`save_local`."""

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """What the site has spent on private tasks (kept in its private cache)."""


class ServerSteps(Protocol):
    """What the server offers a phase's step: rounds, checkpoints, the task's settings."""

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
        """One round of ``phase`` at every site: send, receive, check, average."""

    def save_checkpoint(
        self, phase: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> None:
        """Keep a phase's output (weights and JSON) in the catalog."""

    def load_checkpoint(self, phase: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A phase's kept output."""

    def settings(self, phase: PhaseSpec[S, Any]) -> S:
        """The task's settings of ``phase`` from the plan."""

    def store_encoder(self, encoder: Encoder) -> Encoder:
        """Freeze the trained shared encoder and keep it for good; returns it frozen."""

    def stored_encoder(self) -> Encoder:
        """The frozen shared encoder kept by :meth:`store_encoder`."""


class PhaseSpec(ABC, Generic[S, R]):
    """One phase of a task's lifecycle, both sides of it.

    Attributes:
        name: the phase's name (journal, checkpoints, message type ``train.<name>``).
        message_type: the Flower message type the server sends.
        settings_type: the plan's settings of this phase (a record class).
        reply_type: what a site's reply metrics parse into (a record class).
        server_optimized: whether the task's server optimiser (FedAvgM, FedAdam) steps
            its averages; phases that train network weights over rounds say yes, the
            architecture search and the calibration heads keep the plain average.
        kept_apart: records of a reply that are not averaged but handed to the phase site
            by site (``RoundResult.apart``).
    """

    name: ClassVar[str]
    message_type: ClassVar[str]
    settings_type: ClassVar[type[PhaseSettings]]
    reply_type: ClassVar[type[SiteReply]]
    server_optimized: ClassVar[bool] = False
    kept_apart: ClassVar[frozenset[str]] = frozenset()

    def settings_record(self, settings: S) -> ConfigRecord:
        """The settings as the record the server sends."""
        return ConfigRecord(flat(settings, wire=True))

    def parse_settings(self, record: ConfigRecord | None) -> S:
        """The settings a site received, checked.

        Raises:
            RecordError: naming the field that is wrong.
        """
        values = dict(record) if record is not None else {}
        return parse(self.settings_type, values, f"{self.name} settings", wire=True)  # type: ignore[return-value]

    def parse_reply(self, record: MetricRecord | None, cfg: RoundConfig, where: str) -> R:
        """A site's reply metrics, checked.

        Raises:
            RecordError: naming the field that is wrong.
        """
        values = dict(record) if record is not None else {}
        return parse(self.reply_type, values, where, wire=True)  # type: ignore[return-value]

    def expected_examples(self, cases: int, val_fraction: float) -> int:
        """How many cases a site that described ``cases`` reports (its training split)."""
        return cases - validation_count(cases, val_fraction)

    @abstractmethod
    def at_site(
        self, site: SiteResources, cfg: RoundConfig, settings: S, content: RecordDict
    ) -> RecordDict:
        """Run the phase on the site's own data; the reply holds weights and aggregates."""

    @abstractmethod
    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Run the phase's rounds; returns the new state and a JSON summary for the journal."""

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """The state after this phase, rebuilt from its checkpoint or journal summary."""
        return state


def training_cases(site: SiteResources, cfg: RoundConfig) -> tuple[TaskDataset, list[Case]]:
    """The dataset a round is about and its training split."""
    dataset = site.dataset_for(cfg.structures, cfg.partial_labels)
    train, _ = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    return dataset, list(train)


def load_model(
    site: SiteResources, cfg: RoundConfig, content: RecordDict, trainable_encoder: bool = False
) -> ContinualSegmenter:
    """Encoder and the task's decoder from the message (the frozen encoder maybe cached).

    Raises:
        PayloadError: if a weight record does not fit.
        ValueError: if a trainable encoder was not sent.
    """
    sent = content.array_records.get(ENCODER)
    if trainable_encoder:
        if sent is None:
            raise ValueError(f"{cfg.phase} phase: the message carries no encoder")
        encoder = Encoder(cfg.encoder)
        encoder.load_state_dict(
            record_to_state(sent, encoder.state_dict(), f"{site.name}: encoder")
        )
    else:
        encoder = site.encoder(cfg.encoder_sha256, cfg.encoder, sent)
    decoder = Decoder(cfg.encoder.widths, cfg.genotype, cfg.structures)
    decoder.load_state_dict(
        record_to_state(
            content.array_records[DECODER], decoder.state_dict(), f"{site.name}: decoder"
        )
    )
    model = ContinualSegmenter(encoder)
    model.add_decoder(cfg.task, decoder)
    return model


def reply(
    cfg: RoundConfig, metrics: SiteReply, arrays: Mapping[str, ArrayRecord] | None = None
) -> RecordDict:
    """A site's reply: weights, the metrics record and the encoder hash it worked on."""
    return RecordDict(
        {
            **(arrays or {}),
            METRICS: metrics.to_record(),
            CONFIG: ConfigRecord({ENCODER_SHA: cfg.encoder_sha256}),
        }
    )


class RoundPrivacy:
    """A round's differential privacy at a site: the task's settings and the site's count.

    Args:
        site: the site, whose ledger counts what the round spends.
        cfg: the round, whose ``privacy`` says whether the task is private.

    Raises:
        ValueError: if the site insists on DP and the task has none.
    """

    def __init__(self, site: SiteResources, cfg: RoundConfig) -> None:
        self.cfg, self.ledger = cfg, site.privacy_ledger
        self.epsilon = 0.0
        self.ledger.check_policy(cfg.task, cfg.privacy)

    @property
    def settings(self) -> Privacy | None:
        """The task's DP-SGD settings, or ``None`` for a task without DP."""
        return self.cfg.privacy if self.cfg.privacy.on else None

    @property
    def account(self) -> Account | None:
        """What a private local run tells what it will spend (``None`` without DP)."""
        return self._spend if self.settings is not None else None

    def _spend(self, runs: Sequence[Mechanism], cases: int) -> None:
        what = f"{self.cfg.phase} {self.cfg.round}/{self.cfg.rounds}"
        self.epsilon = self.ledger.spend(self.cfg.task, what, self.cfg.privacy, cases, runs)

    def public(self, value: float) -> float:
        """``value`` (a loss) as it may leave the site: 0 under DP, where it is not private."""
        return 0.0 if self.settings is not None else value


def tail_mean(values: Sequence[float], share: float = 0.25, last: int | None = None) -> float:
    """Mean of the last ``share`` (or the ``last`` few) of a loss curve: a steadier final loss."""
    if not values:
        return 0.0
    tail = values[-(last or max(1, int(len(values) * share))) :]
    return float(sum(tail) / len(tail))
