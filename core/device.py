"""Device choice (CUDA when present, otherwise the CPU) and the precision of training."""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# the plan's default: bfloat16 where the hardware computes it (half the CPU of fp32 for the
# same plateau Dice, README's lever table), fp32 elsewhere
DEFAULT_PRECISION = "auto"


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when available."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: naming it and the choices.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 in hardware.

    A CPU with AVX512-BF16 or AMX, or a CUDA GPU that supports it; elsewhere bfloat16 is
    emulated and slower than fp32.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.2
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Where a training step's forward pass and loss run in mixed precision.

    ``bf16``: convolutions and matrix products in bfloat16 (PyTorch's autocast keeps
    softmax, losses and the weights in fp32); ``fp32``: none; ``auto``: ``bf16`` where the
    device does it in hardware (:func:`native_bf16`), else ``fp32``.
    """
    if check_precision(precision) == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
