"""Weights on the wire: module state <-> Flower ``ArrayRecord``, and checks on what arrives.

Decoders travel in fp16 (half the bytes); the frozen encoder travels once per site in
fp32 so that its sha256 survives the trip. Whatever arrives is checked before use:
expected names and shapes, a float dtype, finite values, a size cap, and the encoder it
was trained on. Arrays are deserialised by Flower with ``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

WIRE_DTYPES = ("float16", "float32")
DEFAULT_MAX_BYTES = 256 * 2**20


class PayloadError(ValueError):
    """A payload that must not be used; the message names the field and what was expected."""


def state_to_record(state: Mapping[str, torch.Tensor], fp16: bool = True) -> ArrayRecord:
    """A module's state as an ``ArrayRecord`` (floats cast to fp16 when ``fp16``)."""
    record = ArrayRecord()
    for name, tensor in state.items():
        array = tensor.detach().to("cpu").contiguous().numpy()
        if fp16 and array.dtype.kind == "f":
            array = array.astype(np.float16)
        record[name] = Array(array)
    return record


def record_to_state(
    record: ArrayRecord,
    template: Mapping[str, torch.Tensor],
    field: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, torch.Tensor]:
    """Check an incoming ``ArrayRecord`` against a module's state and convert it (fp32).

    Args:
        record: what arrived.
        template: the state it must match (names and shapes).
        field: where it came from, for messages (e.g. ``"hospA: decoder"``).
        max_bytes: the largest payload accepted.

    Raises:
        PayloadError: for missing or extra arrays, wrong shapes or dtypes, non-finite
            values, or a payload over the size cap.
    """
    missing = sorted(set(template) - set(record))
    extra = sorted(set(record) - set(template))
    if missing or extra:
        raise PayloadError(f"{field}: arrays differ: missing {missing[:3]}, unexpected {extra[:3]}")
    size = record.count_bytes()
    if size > max_bytes:
        raise PayloadError(f"{field}: {size:,} bytes exceed the cap of {max_bytes:,}")
    state: dict[str, torch.Tensor] = {}
    for name, expected in template.items():
        array = record[name]
        if tuple(array.shape) != tuple(expected.shape):
            raise PayloadError(
                f"{field}: {name} has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
            )
        if array.dtype not in WIRE_DTYPES:
            raise PayloadError(f"{field}: {name} has dtype {array.dtype}, expected float16/32")
        values = array.numpy()
        if not np.all(np.isfinite(values)):
            raise PayloadError(f"{field}: {name} holds NaN or infinite values")
        state[name] = torch.from_numpy(values.astype(np.float32))
    return state
