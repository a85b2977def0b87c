"""Convolution blocks and the searchable decoder operations, from MONAI's ``Convolution``."""

from __future__ import annotations

from typing import Final

from monai.networks.blocks import Convolution
from torch import nn

NORM: Final = ("INSTANCE", {"affine": True})  # nnU-Net's choice; no running stats to drift
ACT: Final = ("LEAKYRELU", {"negative_slope": 0.01})

# Axes are RAS after preprocessing: x and y span the axial plane, z runs along the body.
OP_KERNELS: Final[dict[str, tuple[tuple[int, int, int], ...]]] = {
    "3d": ((3, 3, 3),),
    "p3d": ((3, 3, 1), (1, 1, 3)),
    "2d": ((3, 3, 1),),
}
OPS: Final = tuple(OP_KERNELS)


def conv(in_ch: int, out_ch: int, kernel: int | tuple[int, ...] = 3, stride: int = 1) -> nn.Module:
    """Convolution -> instance norm -> leaky ReLU, padded to keep the size (at stride 1)."""
    return Convolution(3, in_ch, out_ch, strides=stride, kernel_size=kernel, norm=NORM, act=ACT)


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
