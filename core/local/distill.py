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
from core.local.private import Account, Privacy
from core.local.training import (
    LocalTrainSettings,
    PrivateLoop,
    SegmentationLoss,
    check_patch,
    local_loop,
    patch_dataset,
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
    privacy: Privacy | None = None,
    account: Account | None = None,
) -> DistillResult:
    """Train ``student`` from labels and from ``model``'s decoder of ``task`` (the teacher).

    With ``privacy`` under DP-SGD, one patient as the unit, told to ``account`` first
    (:func:`core.local.training.private_optimise`).

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
    supervised = SegmentationLoss(per_case=privacy is not None)
    kd_values: list[float] = []

    def both_losses(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            features = model.encoder(image)
            target = teacher.organ_logits(features).float()
        logits = student.organ_logits(features).float()  # the losses in fp32
        kd = kd_loss(logits, target, temperature)
        return supervised(logits, label) + kd_weight * kd, kd

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        total, kd = both_losses(image, label)
        kd_values.append(float(kd.detach()))
        return total

    start = time.perf_counter()
    dataset = patch_dataset(cases, table, teacher.structures, prep, settings)
    private = None  # under DP each case's KD term is not kept: it would not batch
    if privacy is not None:
        private = PrivateLoop(privacy, student, lambda x, y: both_losses(x, y)[0], account)
    params = list(student.parameters())
    losses = local_loop(params, settings, dataset, loss_of, f"distill {task}", private)
    return DistillResult(losses, kd_values, time.perf_counter() - start)
