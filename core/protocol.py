"""What server and sites say to each other: message types, record keys, the round config.

Every message carries only configuration, weights and aggregate metrics: no image, no
label map, no case identifier ever leaves a site. Each record is parsed into a typed,
bounded dataclass (``core.records``) before use, on both sides; a phase's own settings
and reply are declared in its module (``core.phases``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, MetricRecord

from core import anatomy
from core.data.transforms import Augmentation, Preprocessing
from core.describe import ProtocolError, check_sha256, check_structures
from core.device import DEFAULT_PRECISION, check_precision
from core.local.private import Privacy
from core.local.training import LocalTrainSettings
from core.model import EncoderConfig, Genotype, check_task_name
from core.records import Record, RecordError, flat, parse, setting

# Record keys inside a message's RecordDict.
CONFIG = "config"  # the RoundConfig
SETTINGS = "settings"  # the phase's own settings
DECODER = "decoder"
ENCODER = "encoder"
TEACHER = "teacher"  # the full decoder a student distils from
ARCH = "arch"  # architecture parameters of the search: alpha and beta
HEADS = "heads"  # a decoder's calibration head (confidence and anomaly)
DOMAIN = "domain"  # where a site's CTs hold each structure: centroids, thresholds (core.domain)
METRICS = "metrics"
PRIVACY = "privacy"  # a DP task's spent (epsilon, delta) per site, in its provenance
ENCODER_SHA = "encoder-sha256"


@dataclass(frozen=True)
class Optimiser(Record):
    """How every phase of a task optimises (plan keys ``lr``, ``weight_decay``)."""

    # the defaults are local training's own (one place)
    lr: float = setting(LocalTrainSettings.lr, lo=1e-6, hi=1.0, doc="Adam's initial learning rate")
    weight_decay: float = setting(
        LocalTrainSettings.weight_decay, lo=0.0, hi=0.1, doc="Adam's L2 penalty"
    )


def local_settings(
    optimiser: Optimiser,
    batch_size: int,
    patch: tuple[int, int, int],
    seed: int,
    precision: str,
    **schedule: Any,
) -> LocalTrainSettings:
    """The one place a plan's settings become a local loop's (steps, schedule as given)."""
    return LocalTrainSettings(
        batch_size=batch_size,
        lr=optimiser.lr,
        weight_decay=optimiser.weight_decay,
        augmentation=Augmentation(patch_size=patch),
        seed=seed,
        precision=precision,
        **schedule,
    )


@dataclass(frozen=True)
class RoundConfig(Record):
    """What the server tells a site for one round of one phase of one task."""

    task: str = setting(lo=1, hi=64)
    phase: str = setting(lo=1, hi=32)
    structures: tuple[str, ...] = setting(lo=1, hi=64)
    genotype: Genotype = setting()
    encoder: EncoderConfig = setting()
    preprocessing: Preprocessing = setting()
    patch: tuple[int, int, int] = setting(lo=8, hi=256)
    encoder_sha256: str = setting("", hi=64)
    optimiser: Optimiser = setting(Optimiser())
    batch_size: int = setting(2, lo=1, hi=64)
    seed: int = setting(0, lo=0, hi=2**31 - 1)
    val_fraction: float = setting(0.2, lo=0.01, hi=0.99)
    round: int = setting(1, lo=1, hi=10_000)
    rounds: int = setting(1, lo=1, hi=10_000)
    precision: str = setting(DEFAULT_PRECISION, lo=1, hi=8)
    partial_labels: bool = setting(False)
    privacy: Privacy = setting(Privacy())
    labels: tuple[str, ...] = setting(
        (),
        lo=1,
        hi=64,
        doc="the structures the site's dataset must label where not `structures` (a peer "
        "round scores another task's decoder on this task's dataset, server.peers)",
    )

    def __post_init__(self) -> None:
        check_task_name(self.task)
        check_sha256(self.encoder_sha256, "encoder-sha256", allow_empty=True)
        check_structures(self.structures, "structures")
        if self.labels:
            check_structures(self.labels, "labels")
        if len(self.genotype.stages) != len(self.encoder.widths) - 1:
            raise ValueError(
                f"genotype: {len(self.genotype.stages)} stages for an encoder of "
                f"{len(self.encoder.widths)} levels"
            )
        if any(side % self.encoder.divisor for side in self.patch):
            raise ValueError(
                f"patch {self.patch}: sides must be multiples of {self.encoder.divisor}"
            )
        if self.round > self.rounds:
            raise ValueError(f"round {self.round} of {self.rounds}")
        check_precision(self.precision)

    def to_record(self) -> ConfigRecord:
        """As a Flower ConfigRecord (nested values as JSON strings)."""
        return ConfigRecord(flat(self, wire=True))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundConfig:
        """Parse and check a ConfigRecord.

        Raises:
            ProtocolError: naming the missing or malformed field.
        """
        try:
            return parse(cls, dict(record), "round config", wire=True)
        except (RecordError, anatomy.UnknownStructureError) as e:
            raise ProtocolError(str(e)) from None

    def activation_bytes(self) -> int:
        """A rough upper estimate of the activations one training step keeps (fp32).

        Per level about a dozen feature maps of the level's width (convolutions, norms,
        activations and their gradients, encoder and decoder), times the batch.
        """
        voxels = self.patch[0] * self.patch[1] * self.patch[2]
        per_voxel = sum(w / 8**i for i, w in enumerate(self.encoder.widths))
        return int(12 * 4 * self.batch_size * voxels * per_voxel)

    def check_affordable(self, max_bytes: int) -> None:
        """Refuse a round this site cannot run within ``max_bytes`` of activations.

        Raises:
            ProtocolError: naming the estimate and the limit.
        """
        need = self.activation_bytes()
        if need > max_bytes:
            raise ProtocolError(
                f"round config: widths {list(self.encoder.widths)}, patch {list(self.patch)}, "
                f"batch {self.batch_size} need about {need / 2**30:.1f} GiB of activations; "
                f"this site allows {max_bytes / 2**30:.1f} GiB"
            )

    def train_settings(self, steps: int) -> LocalTrainSettings:
        """Local optimisation for this round: one LR schedule runs across the rounds."""
        return local_settings(
            self.optimiser,
            self.batch_size,
            self.patch,
            self.seed * 1000 + self.round,
            self.precision,
            steps=steps,
            progress=False,
            schedule_start=(self.round - 1) * steps,
            schedule_total=self.rounds * steps,
        )


@dataclass(frozen=True)
class SiteReply(Record):
    """What every training reply reports: examples trained on, final loss, seconds."""

    examples: int = setting(lo=1, hi=1_000_000, doc="training cases at the site")
    loss: float = setting(0.0, lo=0.0, hi=1e6)
    seconds: float = setting(0.0, lo=0.0, hi=1e7)
    epsilon: float = setting(
        0.0, lo=0.0, hi=1e9, doc="a private task's epsilon spent so far at the site (0: no DP)"
    )

    def to_record(self) -> MetricRecord:
        """As a Flower MetricRecord."""
        return MetricRecord(flat(self, wire=True))
