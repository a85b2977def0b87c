"""What server and sites say to each other: message types, record keys, round settings.

Every message carries only configuration, weights and aggregate metrics: no image, no
label map, no case identifier ever leaves a site.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord

from core.data.transforms import Augmentation, Preprocessing
from core.model import EncoderConfig, Genotype
from core.training import TrainSettings

# Message types (Flower's "<category>.<action>"): one per phase a site takes part in.
DESCRIBE = "query.describe"
TRAIN = "train"  # train.base, train.teacher, ... one per training phase
EVALUATE = "evaluate"

# Record keys inside a message's RecordDict.
CONFIG = "config"
DECODER = "decoder"
ENCODER = "encoder"
TEACHER = "teacher"  # the full decoder a student distils from
ARCH = "arch"  # architecture parameters of the search: alpha and beta
HEADS = "heads"  # a decoder's calibration head (confidence and anomaly)
METRICS = "metrics"
SITE = "site"
ENCODER_SHA = "encoder-sha256"


class ProtocolError(ValueError):
    """A message that lacks a field or carries a bad value."""


@dataclass(frozen=True)
class RoundConfig:
    """What the server tells a site for one round of one phase of one task."""

    task: str
    phase: str
    structures: tuple[str, ...]
    genotype: Genotype
    encoder: EncoderConfig
    encoder_sha256: str
    preprocessing: Preprocessing
    patch: tuple[int, int, int]
    steps: int = 0
    lr: float = 1e-2
    batch_size: int = 2
    schedule_start: int = 0
    schedule_total: int = 0
    seed: int = 0
    val_fraction: float = 0.2
    round: int = 1
    budget_params: int = 0
    kd_weight: float = 1.0
    temperature: float = 2.0

    def to_record(self) -> ConfigRecord:
        """As a Flower ConfigRecord (nested values as JSON strings)."""
        return ConfigRecord(
            {
                "task": self.task,
                "phase": self.phase,
                "structures": list(self.structures),
                "genotype": json.dumps(self.genotype.to_json()),
                "encoder": json.dumps(self.encoder.to_json()),
                ENCODER_SHA: self.encoder_sha256,
                "preprocessing": json.dumps(self.preprocessing.to_json()),
                "patch": list(self.patch),
                "steps": self.steps,
                "lr": self.lr,
                "batch-size": self.batch_size,
                "schedule-start": self.schedule_start,
                "schedule-total": self.schedule_total,
                "seed": self.seed,
                "val-fraction": self.val_fraction,
                "round": self.round,
                "budget-params": self.budget_params,
                "kd-weight": self.kd_weight,
                "temperature": self.temperature,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundConfig:
        """Parse and check a ConfigRecord.

        Raises:
            ProtocolError: naming the missing or malformed field.
        """

        def get(key: str) -> Any:
            if key not in record:
                raise ProtocolError(f"round config: missing {key!r}")
            return record[key]

        try:
            patch = [int(v) for v in get("patch")]
            return cls(
                task=str(get("task")),
                phase=str(get("phase")),
                structures=tuple(str(s) for s in get("structures")),
                genotype=Genotype.from_json(json.loads(str(get("genotype")))),
                encoder=EncoderConfig.from_json(json.loads(str(get("encoder")))),
                encoder_sha256=str(get(ENCODER_SHA)),
                preprocessing=Preprocessing.from_json(json.loads(str(get("preprocessing")))),
                patch=(patch[0], patch[1], patch[2]),
                steps=int(get("steps")),
                lr=float(get("lr")),
                batch_size=int(get("batch-size")),
                schedule_start=int(get("schedule-start")),
                schedule_total=int(get("schedule-total")),
                seed=int(get("seed")),
                val_fraction=float(get("val-fraction")),
                round=int(get("round")),
                budget_params=int(record.get("budget-params", 0)),  # type: ignore[arg-type]
                kd_weight=float(record.get("kd-weight", 1.0)),  # type: ignore[arg-type]
                temperature=float(record.get("temperature", 2.0)),  # type: ignore[arg-type]
            )
        except (ValueError, KeyError, IndexError, TypeError) as e:
            if isinstance(e, ProtocolError):
                raise
            raise ProtocolError(f"round config: {e}") from None

    def augmentation(self) -> Augmentation:
        """Patch sampling for this round."""
        return Augmentation(patch_size=self.patch)

    def train_settings(self) -> TrainSettings:
        """Local optimisation settings for this round (one LR schedule across rounds)."""
        return TrainSettings(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            augmentation=self.augmentation(),
            seed=self.seed * 1000 + self.round,
            progress=False,
            schedule_start=self.schedule_start,
            schedule_total=self.schedule_total,
        )
