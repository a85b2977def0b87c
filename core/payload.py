"""Weights on the wire: module state <-> Flower ``ArrayRecord``, and checks on what arrives.

Decoders travel in fp16 (half the bytes); the frozen encoder travels once per site in
fp32 so that its sha256 survives the trip. Whatever arrives is hostile until checked:
expected names, the size cap, and for every array the ``.npy`` bytes themselves (not the
sender's declaration): the header's dtype and shape must equal the declared ones and the
template's shape, the byte length must be exactly what they imply, and the decoded values
must be finite and representable in fp16 (every state is sent on again in fp16). Bytes are
decoded with numpy and never unpickled.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.typing import NDArray

WIRE_DTYPES = ("float16", "float32")
DEFAULT_MAX_BYTES = 256 * 2**20
FP16_MAX = float(np.finfo(np.float16).max)
"""The largest magnitude accepted by default: anything larger becomes inf once sent in fp16."""

_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


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


def decode_array(array: Array, shape: tuple[int, ...], where: str) -> NDArray[np.floating]:
    """The values of one wire array, checked against its declaration and the expected shape.

    The ``.npy`` header is read before anything is allocated, so a header that claims a
    huge shape costs nothing; the data must then be exactly as long as dtype and shape say.

    Args:
        array: what arrived.
        shape: the shape the receiver expects.
        where: the field, for messages (e.g. ``"hospA: decoder: head.weight"``).

    Raises:
        PayloadError: for an unknown serialisation, a declared or actual dtype other than
            float16/float32, a declaration that disagrees with the bytes, a wrong shape or
            length, or bytes that are not a ``.npy`` array.
    """
    if array.stype != SType.NUMPY:
        raise PayloadError(f"{where} has serialisation {array.stype!r}, expected {SType.NUMPY!r}")
    if array.dtype not in WIRE_DTYPES:
        raise PayloadError(f"{where} has dtype {array.dtype}, expected float16/32")
    declared = tuple(array.shape)
    if declared != shape:
        raise PayloadError(f"{where} has shape {declared}, expected {shape}")
    data = array.data
    if not isinstance(data, bytes):
        raise PayloadError(f"{where} has data of type {type(data).__name__}, expected bytes")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = _NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported format version {version}")
        actual_shape, fortran_order, dtype = read_header(stream)
    except (ValueError, TypeError, SyntaxError, EOFError) as e:
        raise PayloadError(f"{where} is not a .npy array ({e})") from None
    if dtype != np.dtype(array.dtype):
        raise PayloadError(f"{where} holds {dtype} bytes, declared {array.dtype}")
    if tuple(actual_shape) != shape:
        raise PayloadError(f"{where} holds bytes of shape {tuple(actual_shape)}, declared {shape}")
    count = math.prod(shape)
    expected = stream.tell() + count * dtype.itemsize
    if len(data) != expected:
        raise PayloadError(
            f"{where} has {len(data):,} bytes, expected {expected:,} for {dtype}{shape}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def record_to_state(
    record: ArrayRecord,
    template: Mapping[str, torch.Tensor],
    field: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_abs: float = FP16_MAX,
) -> dict[str, torch.Tensor]:
    """Check an incoming ``ArrayRecord`` against a module's state and convert it (fp32).

    Args:
        record: what arrived.
        template: the state it must match (names and shapes).
        field: where it came from, for messages (e.g. ``"hospA: decoder"``).
        max_bytes: the largest payload accepted.
        max_abs: the largest magnitude accepted (default: the fp16 maximum, so that an
            accepted state stays finite when sent on in fp16).

    Raises:
        PayloadError: for missing or extra arrays, a payload over the size cap, and any
            array :func:`decode_array` refuses or whose values are not finite or exceed
            ``max_abs``.
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
        values = decode_array(record[name], tuple(expected.shape), f"{field}: {name}")
        if not np.all(np.isfinite(values)):
            raise PayloadError(f"{field}: {name} holds NaN or infinite values")
        if np.any(np.abs(values) > max_abs):
            raise PayloadError(f"{field}: {name} holds values beyond +-{max_abs:g}")
        state[name] = torch.from_numpy(values.astype(np.float32))
    return state
