"""Device choice (CUDA when present, otherwise the CPU) and the precision of training."""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# the plan's default: bfloat16 where it is measured safe and fast (half the CPU of fp32 for
# the same plateau Dice, README's lever table), fp32 elsewhere
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


def _cpu_has(check: str) -> bool:
    """A ``torch.cpu._is_<check>_supported`` flag (torch >= 2.2; False where it is missing)."""
    return bool(getattr(torch.cpu, f"_is_{check}_supported", lambda: False)())


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 in hardware (AVX512-BF16 or AMX, or a CUDA GPU).

    Elsewhere bfloat16 is emulated and slower than fp32.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and (_cpu_has("avx512_bf16") or _cpu_has("amx_tile"))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Where a forward pass (a training step's, or prediction's) runs in mixed precision.

    ``bf16``: convolutions and matrix products in bfloat16 (the weights stay fp32, and the
    project's losses cast their inputs to fp32, since CPU autocast leaves softmax and sums in
    bfloat16); ``fp32``: none; ``auto``: ``bf16`` where :func:`native_bf16`, else ``fp32``.

    On a CPU with AVX512-BF16 but no AMX, oneDNN's bfloat16 weight gradient is not finite
    where an input side is shorter than the kernel; the network's convolutions run those in
    fp32 (``core.model.blocks.FiniteConv3d``), which made this project's training turn NaN
    at random there before.
    """
    if check_precision(precision) == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
