"""Teacher-student distillation: the searched student learns from labels and the teacher.

Loss = DiceCE(student, labels) + ``kd_weight`` * T^2 * KL(softmax(teacher / T) ||
softmax(student / T)), per voxel, on the frozen encoder's features (computed once per
batch for both decoders). Only the student learns; the teacher is dropped afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.data import Case, LabelTable
from core.data.transforms import Preprocessing
from core.local.training import (
    LocalTrainSettings,
    SegmentationLoss,
    check_patch,
    optimise,
    patch_batches,
)
from core.model import ContinualSegmenter, Decoder


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled KL divergence from the teacher's to the student's class distribution."""
    t = temperature
    log_student = F.log_softmax(student / t, dim=1)
    soft_teacher = F.softmax(teacher / t, dim=1)
    kl = F.kl_div(log_student, soft_teacher, reduction="none").sum(dim=1)
    return kl.mean() * t * t


@dataclass
class DistillResult:
    """Losses of a distillation run: total, and the KD term alone."""

    losses: list[float]
    kd_losses: list[float]
    seconds: float


def distill_phase(
    model: ContinualSegmenter,
    task: str,
    student: Decoder,
    table: LabelTable,
    cases: Sequence[Case],
    prep: Preprocessing,
    settings: LocalTrainSettings,
    kd_weight: float = 1.0,
    temperature: float = 2.0,
) -> DistillResult:
    """Train ``student`` from labels and from ``model``'s decoder of ``task`` (the teacher).

    Raises:
        ValueError: if the encoder is not frozen, the student predicts other structures
            than the teacher, or there are no cases.
    """
    teacher = model.decoder(task)
    if not model.encoder.frozen:
        raise ValueError("distill phase: the encoder must be frozen")
    if student.structures != teacher.structures:
        raise ValueError(
            f"{task}: student structures {student.structures} != teacher's {teacher.structures}"
        )
    if not cases:
        raise ValueError(f"{task}: no training cases")
    check_patch(settings.augmentation.patch_size, model.encoder.config.divisor)
    torch.manual_seed(settings.seed)
    device = next(model.parameters()).device
    student.to(device).train()
    teacher.eval()
    supervised = SegmentationLoss()
    kd_values: list[float] = []

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = model.encoder(image)
            target = teacher.organ_logits(features).float()
        logits = student.organ_logits(features).float()  # the losses in fp32
        kd = kd_loss(logits, target, temperature)
        kd_values.append(float(kd.detach()))
        out: torch.Tensor = supervised(logits, label) + kd_weight * kd
        return out

    start = time.perf_counter()
    batches = patch_batches(cases, table, teacher.structures, prep, settings)
    losses = optimise(
        list(student.parameters()), settings, batches, loss_of, device, f"distill {task}"
    )
    return DistillResult(losses, kd_values, time.perf_counter() - start)
