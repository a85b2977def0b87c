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


def safe_bf16(device: torch.device) -> bool:
    """Whether ``auto`` trains in bfloat16 here: native and measured to train without NaN.

    A CUDA GPU with bfloat16, or a CPU with AMX. Not a CPU with AVX512-BF16 but no AMX
    (AMD Zen 4 and 5, Intel Cooper Lake): there oneDNN runs bfloat16 convolutions with its
    ``avx512_core_bf16`` kernels, and this project's training turned NaN at its second step
    in about one test-suite run in three on such an AMD EPYC, depending on what the
    process had run before (the same tests in fp32, or on AMX, never did). ``bf16`` named
    explicitly still runs there; :func:`core.local.training.optimise` stops a phase whose loss or
    gradients turn non-finite.
    """
    if device.type == "cuda":
        return native_bf16(device)
    return device.type == "cpu" and _cpu_has("amx_tile")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Where a training step's forward pass runs in mixed precision.

    ``bf16``: convolutions and matrix products in bfloat16 (the weights stay fp32, and the
    project's losses cast their inputs to fp32, since CPU autocast leaves softmax and sums in
    bfloat16); ``fp32``: none; ``auto``: ``bf16`` where :func:`safe_bf16`, else ``fp32``.
    """
    if check_precision(precision) == "bf16" or (precision == "auto" and safe_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
