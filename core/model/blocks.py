"""Convolution blocks and the searchable decoder operations, from MONAI's ``Convolution``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn import functional as F

NORM: Final = ("INSTANCE", {"affine": True})  # nnU-Net's choice; no running stats to drift
ACT: Final = ("LEAKYRELU", {"negative_slope": 0.01})

# Axes are RAS after preprocessing: x and y span the axial plane, z runs along the body.
OP_KERNELS: Final[dict[str, tuple[tuple[int, int, int], ...]]] = {
    "3d": ((3, 3, 3),),
    "p3d": ((3, 3, 1), (1, 1, 3)),
    "2d": ((3, 3, 1),),
}
OPS: Final = tuple(OP_KERNELS)


class FiniteConv3d(nn.Conv3d):
    """A 3D convolution tuned for oneDNN: fp32 over short sides, channels-last when narrow.

    oneDNN's bfloat16 weight gradient (its ``avx512_core_bf16`` kernels, on CPUs with
    AVX512-BF16 but no AMX) returns non-finite values, at random from call to call with the
    same inputs, when an input side is shorter than the kernel along it (measured with
    torch 2.13: 3x3x3 and 3x3x1 kernels over 2-voxel sides, up to every call; never over
    64 shapes of sides 2-6 otherwise, nor for transposed or strided convolutions). Such
    inputs are a network's deepest levels, a few voxels, so fp32 costs nothing there.
    A narrow one runs channels-last (see :data:`NARROW`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution: outside autocast over a short side, channels-last if narrow."""
        short = any(s < k for s, k in zip(x.shape[2:], self.kernel_size, strict=True))
        if short and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # back in x's dtype, as it came
                return super().forward(x.float()).to(x.dtype)
        narrow = self.in_channels > 1 and min(self.in_channels, self.out_channels) <= NARROW
        if narrow and x.device.type == "cpu" and _NARROW_CHANNELS_LAST.get():
            last, standard = torch.channels_last_3d, torch.contiguous_format
            return _reformat(super().forward(_reformat(x, last, standard)), standard, last)
        return super().forward(x)


NARROW: Final = 8
"""At most this many input or output channels, a CPU convolution runs channels-last.

oneDNN computes narrow 3D convolutions channels-last far faster, their backward above all
(measured on an AMD EPYC, 2 threads, 8 -> 8 channels at 48^3, batch 2, forward and
backward: bf16 24.4 -> 9.6 ms, fp32 57.0 -> 14.7 ms, the conversions included). Only the
convolution changes format: instance norm and leaky ReLU run their fastest contiguous, and
mixing formats in one elementwise backward is slower still, so both sides convert back
(:class:`_Reformat`, gradients included). A network's first convolution (one input
channel, the CT) stays standard: its weight gradient is slower channels-last (1 -> 8 at
48^3 bf16: 7.5 against 6.5 ms; 1 -> 32 at 96^3: 320 against 164 ms).
"""

_NARROW_CHANNELS_LAST: ContextVar[bool] = ContextVar("narrow_channels_last", default=True)


@contextmanager
def standard_format() -> Iterator[None]:
    """Every convolution in the standard format within (``vmap`` cannot batch the other)."""
    token = _NARROW_CHANNELS_LAST.set(False)
    try:
        yield
    finally:
        _NARROW_CHANNELS_LAST.reset(token)


class _Reformat(torch.autograd.Function):
    """A tensor in one memory format, its gradient in another (the same values)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, to: torch.memory_format, back: torch.memory_format
    ) -> torch.Tensor:
        ctx.back = back
        return x.contiguous(memory_format=to)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.contiguous(memory_format=ctx.back), None, None


def _reformat(x: torch.Tensor, to: torch.memory_format, back: torch.memory_format) -> torch.Tensor:
    out: torch.Tensor = _Reformat.apply(x, to, back)  # type: ignore[no-untyped-call]
    return out


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 convolution (an organ head) computed as a matrix product over the channels.

    On the channels-last view it is one GEMM, and a softmax over its output then runs over
    contiguous memory: for 116 structures at 96^3 a decoder's heads took 1.2 s instead of
    1.9 s a window (oneDNN computes a 1x1x1 convolution to many channels poorly). Its
    parameters are a ``Conv3d``'s.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size=1)

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ..., out)``: the output with the channels last."""
        return F.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, out, ...)``, a view of :meth:`channels_last`."""
        return self.channels_last(x).movedim(-1, 1)


def conv(in_ch: int, out_ch: int, kernel: int | tuple[int, ...] = 3, stride: int = 1) -> nn.Module:
    """Convolution -> instance norm -> leaky ReLU, padded to keep the size (at stride 1)."""
    block = Convolution(3, in_ch, out_ch, strides=stride, kernel_size=kernel, norm=NORM, act=ACT)
    block.conv.__class__ = FiniteConv3d  # the same parameters; see FiniteConv3d
    return block


def init_he(module: nn.Module) -> None:
    """nnU-Net's initialisation: He normal for leaky ReLU (slope 0.01), zero biases.

    PyTorch's default initialisation is smaller and, measured on small phantoms, often
    leaves small structures unlearnt after a few hundred steps.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(layer.weight, a=1e-2)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def op_block(op: str, in_ch: int, out_ch: int) -> nn.Sequential:
    """One searchable operation: ``3d`` (3x3x3), ``p3d`` (3x3x1 then 1x1x3) or ``2d`` (3x3x1).

    Raises:
        ValueError: for an unknown operation.
    """
    if op not in OP_KERNELS:
        raise ValueError(f"unknown decoder operation {op!r}; expected one of {', '.join(OPS)}")
    kernels = OP_KERNELS[op]
    layers = [conv(in_ch if i == 0 else out_ch, out_ch, k) for i, k in enumerate(kernels)]
    return nn.Sequential(*layers)
