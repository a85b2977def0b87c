"""Teacher-student distillation: the searched student learns from labels and the teacher.

Loss = DiceCE(student, labels) + ``kd_weight`` * T^2 * KL(softmax(teacher / T) ||
softmax(student / T)), per voxel, on the frozen encoder's features (computed once per
batch for both decoders). Only the student learns; the teacher is dropped afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.data import Case, LabelTable
from core.data.transforms import Preprocessing
from core.model import ContinualSegmenter, Decoder, Genotype
from core.training import SegmentationLoss, TrainSettings, check_patch, optimise, patch_batches


def _inherit_op(
    student_block: Any,
    teacher_conv: Any,
    inputs: list[int],
    outputs: int,
) -> None:
    """Initialise one operation from the teacher's 3x3x3 convolution (and its norm).

    A 3d layer takes the sliced kernel as it is; an in-plane 3x3x1 layer takes it summed
    over z (its response to z-constant input); the 1x1x3 layer of p3d starts as identity.
    """
    weight = teacher_conv.conv.weight[:outputs][:, inputs]
    for i, layer in enumerate(student_block):
        conv, norm = layer.conv, layer.adn.N
        kernel = tuple(conv.weight.shape[2:])
        if i == 0:
            conv.weight.copy_(weight if kernel == (3, 3, 3) else weight.sum(dim=4, keepdim=True))
            conv.bias.copy_(teacher_conv.conv.bias[:outputs])
            norm.weight.copy_(teacher_conv.adn.N.weight[:outputs])
            norm.bias.copy_(teacher_conv.adn.N.bias[:outputs])
        else:  # the 1x1x3 half of p3d
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(conv.weight.shape[0]):
                conv.weight[c, c, 0, 0, 1] = 1.0


@torch.no_grad()
def inherit(student: Decoder, teacher: Decoder) -> Decoder:
    """Start a student from its teacher's weights: the first channels of every layer.

    Distillation then has less to learn: with the teacher's own genotype the student
    starts as an exact copy of the teacher.

    Raises:
        ValueError: if the teacher is not a full-width 3d decoder on the same encoder.
    """
    n = len(teacher.genotype.stages)
    if teacher.genotype != Genotype.teacher(n) or teacher.encoder_widths != student.encoder_widths:
        raise ValueError(
            "inherit: the teacher must be the full-width 3d decoder of the same encoder"
        )
    widths = student.genotype.widths(student.encoder_widths)
    full = teacher.genotype.widths(teacher.encoder_widths)
    below = [student.encoder_widths[-1], *widths[:-1]]
    t: Any = teacher  # MONAI blocks are reached by attribute; typed loosely here
    st: Any = student
    for s, (w, big, b) in enumerate(zip(widths, full, below, strict=True)):
        up_t, up_s = t.ups[s].deconv, st.ups[s].deconv
        up_s.weight.copy_(up_t.weight[:b, :w])
        up_s.bias.copy_(up_t.bias[:w])
        skip = t.stages[s][0][0].conv.weight.shape[1] - big
        first_inputs = [*range(w), *range(big, big + skip)]
        _inherit_op(st.stages[s][0], t.stages[s][0][0], first_inputs, w)
        _inherit_op(st.stages[s][1], t.stages[s][1][0], list(range(w)), w)
    st.organ_head.weight.copy_(t.organ_head.weight[:, : widths[-1]])
    st.organ_head.bias.copy_(t.organ_head.bias)
    first_t, first_s = t.calibration_head[0], st.calibration_head[0]
    softmax_inputs = [*range(widths[-1]), *range(full[-1], first_t.weight.shape[1])]
    first_s.weight.copy_(first_t.weight[:, softmax_inputs])
    first_s.bias.copy_(first_t.bias)
    st.calibration_head[2].load_state_dict(t.calibration_head[2].state_dict())
    return student


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
    settings: TrainSettings,
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
