"""A student decoder's start: the teacher's weights, cut to the student's genotype.

Each operation of the searched student takes the first channels of the teacher's layer
(in-plane kernels from the teacher's 3x3x3 kernels summed over z), so distillation starts
from what the teacher learnt rather than from noise.
"""

from __future__ import annotations

from typing import Any

import torch

from core.model import Decoder, Genotype


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
