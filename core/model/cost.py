"""Parameter and multiply-accumulate counts of encoders, decoders and genotypes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.model.blocks import OP_KERNELS
from core.model.decoder import CALIBRATION_WIDTH, Decoder
from core.model.encoder import Encoder, EncoderConfig
from core.model.genotype import Genotype


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


def _conv(in_ch: int, out_ch: int, kernel: Sequence[int]) -> int:
    """Weights and bias of a convolution, plus the affine instance norm after it."""
    return in_ch * out_ch * math.prod(kernel) + out_ch + 2 * out_ch


def op_parameters(op: str, in_ch: int, out_ch: int) -> int:
    """Parameters of one searchable operation (``core.model.blocks.op_block``)."""
    kernels = OP_KERNELS[op]
    return sum(_conv(in_ch if i == 0 else out_ch, out_ch, k) for i, k in enumerate(kernels))


def stage_parameters(op: str, width: int, below: int, skip: int) -> int:
    """Parameters of a decoder stage: the x2 transposed conv and two operations."""
    up = below * width * 8 + width
    return up + op_parameters(op, width + skip, width) + op_parameters(op, width, width)


def head_parameters(width: int, n_structures: int) -> int:
    """Parameters of the organ head (1x1x1, 1 + K) and the calibration head."""
    classes = n_structures + 1
    hidden = CALIBRATION_WIDTH
    calibration = (width + classes) * hidden * 27 + hidden + hidden * 2 + 2
    return width * classes + classes + calibration


def genotype_parameters(
    encoder_widths: Sequence[int], genotype: Genotype, n_structures: int
) -> int:
    """Parameters of the decoder a genotype builds, computed without building it."""
    widths = genotype.widths(encoder_widths)
    skips = list(reversed(encoder_widths[:-1]))
    below = [encoder_widths[-1], *widths[:-1]]
    stages = zip(genotype.stages, widths, below, skips, strict=True)
    total = sum(stage_parameters(s.op, w, b, k) for s, w, b, k in stages)
    return total + head_parameters(widths[-1], n_structures)


def count_macs(module: nn.Module, run: object) -> int:
    """Multiply-accumulates of every convolution in ``module`` while ``run()`` executes."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(layer, nn.Conv3d | nn.ConvTranspose3d)
        kernel = math.prod(layer.kernel_size)
        per_output = kernel * layer.in_channels // layer.groups
        if isinstance(layer, nn.ConvTranspose3d):  # every input voxel scatters into a kernel
            total += inputs[0].numel() * kernel * layer.out_channels // layer.groups
        else:
            total += output.numel() * per_output

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    try:
        with torch.no_grad():
            run()  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass(frozen=True)
class Cost:
    """Size and compute of a decoder for one patch (batch 1)."""

    parameters: int
    macs: int


def genotype_cost(
    encoder_config: EncoderConfig,
    genotype: Genotype,
    structures: Sequence[str],
    patch: tuple[int, int, int] = (64, 64, 64),
) -> Cost:
    """Parameters and MACs of the decoder a genotype builds, on one patch."""
    encoder = Encoder(encoder_config).eval()
    decoder = Decoder(encoder_config.widths, genotype, structures).eval()
    with torch.no_grad():
        features = encoder(torch.zeros(1, encoder_config.in_channels, *patch))
    return Cost(count_parameters(decoder), count_macs(decoder, lambda: decoder(features)))
