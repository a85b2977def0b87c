import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

from core.data.transforms import Preprocessing
from core.describe import ProtocolError
from core.model import Decoder, EncoderConfig, Genotype
from core.payload import FP16_MAX, PayloadError, record_to_state, state_to_record
from core.protocol import RoundConfig
from tests.models import TINY


def _decoder():
    torch.manual_seed(0)
    return Decoder(TINY.widths, Genotype.teacher(3), ("liver", "spleen"))


def test_fp16_round_trip_is_close_and_half_the_bytes():
    state = _decoder().state_dict()
    half, full = state_to_record(state), state_to_record(state, fp16=False)
    assert half.count_bytes() < 0.6 * full.count_bytes()
    back = record_to_state(half, state, "test")
    for name, tensor in state.items():
        assert back[name].dtype == torch.float32
        assert torch.allclose(back[name], tensor, atol=1e-2, rtol=1e-2)
    exact = record_to_state(full, state, "test")
    assert all(torch.equal(exact[k], v) for k, v in state.items())


def _corrupt(record, name, array):
    out = ArrayRecord()
    for key, value in record.items():
        out[key] = Array(array) if key == name else value
    return out


def test_nan_is_refused_naming_the_array():
    state = _decoder().state_dict()
    record = state_to_record(state)
    name = next(iter(state))
    bad = record[name].numpy().copy()
    bad.flat[0] = np.nan
    with pytest.raises(PayloadError, match=f"hospX: decoder: {name} holds NaN"):
        record_to_state(_corrupt(record, name, bad), state, "hospX: decoder")


def test_wrong_shape_dtype_names_and_size_are_refused():
    state = _decoder().state_dict()
    record = state_to_record(state)
    name = next(iter(state))
    with pytest.raises(PayloadError, match="has shape"):
        record_to_state(_corrupt(record, name, np.zeros((2, 2), np.float16)), state, "x")
    with pytest.raises(PayloadError, match="dtype int64"):
        shape = tuple(state[name].shape)
        record_to_state(_corrupt(record, name, np.zeros(shape, np.int64)), state, "x")
    smaller = ArrayRecord({k: v for k, v in record.items() if k != name})
    with pytest.raises(PayloadError, match="missing"):
        record_to_state(smaller, state, "x")
    with pytest.raises(PayloadError, match="exceed the cap"):
        record_to_state(record, state, "x", max_bytes=1000)


def test_round_config_round_trip_and_missing_fields():
    cfg = RoundConfig(
        task="abdomen",
        phase="teacher",
        structures=("liver",),
        genotype=Genotype.uniform("p3d", 0.5, 3),
        encoder=EncoderConfig((8, 16, 32, 64)),
        encoder_sha256="ab" * 32,
        preprocessing=Preprocessing((2.0, 2.0, 3.0)),
        patch=(32, 32, 32),
        round=2,
        rounds=3,
    )
    assert RoundConfig.from_record(cfg.to_record()) == cfg
    record = cfg.to_record()
    del record["patch"]
    with pytest.raises(ProtocolError, match="missing 'patch'"):
        RoundConfig.from_record(record)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _header_only(descr, shape):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def _zip_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3, np.float16))
    return buffer.getvalue()


def _hostile(shape):
    """Arrays whose declaration says fp16 of the expected shape; their bytes say otherwise."""
    n = int(np.prod(shape))
    return {
        "float64 bytes": ("float16", SType.NUMPY, _npy(np.zeros(shape, np.float64))),
        "int64 bytes": ("float16", SType.NUMPY, _npy(np.zeros(shape, np.int64))),
        "one element": ("float16", SType.NUMPY, _npy(np.zeros(1, np.float16))),
        "big-endian": ("float16", SType.NUMPY, _npy(np.zeros(shape, ">f2"))),
        "trailing bytes": ("float16", SType.NUMPY, _npy(np.zeros(shape, np.float16)) + b"\0" * 8),
        "short data": ("float16", SType.NUMPY, _header_only("<f2", shape) + b"\0" * n),
        "huge header shape": ("float16", SType.NUMPY, _header_only("<f2", (10**12,))),
        "object dtype": ("float16", SType.NUMPY, _header_only("|O", shape)),
        "garbage": ("float16", SType.NUMPY, b"\x93NUMPY garbage" * 4),
        "not npy": ("float16", SType.NUMPY, b"hello"),
        "npz archive": ("float16", SType.NUMPY, _zip_bytes()),
        "unknown stype": ("float16", "torch.Tensor", _npy(np.zeros(shape, np.float16))),
        "declared int64": ("int64", SType.NUMPY, _npy(np.zeros(shape, np.int64))),
    }


@pytest.mark.parametrize("case", list(_hostile((2, 3))))
def test_hostile_bytes_raise_payload_error_only(case):
    state = _decoder().state_dict()
    record = state_to_record(state)
    name = next(iter(state))
    shape = tuple(state[name].shape)
    dtype, stype, data = _hostile(shape)[case]
    bad = ArrayRecord({**dict(record.items()), name: Array(dtype, shape, stype, data)})
    with pytest.raises(PayloadError, match=f"x: {name} "):
        record_to_state(bad, state, "x")


def test_values_beyond_fp16_range_are_refused_even_in_fp32():
    state = _decoder().state_dict()
    record = state_to_record(state, fp16=False)
    name = next(iter(state))
    huge = record[name].numpy().copy()
    huge.flat[0] = 3e38  # finite in fp32, inf once averaged and sent on in fp16
    with pytest.raises(PayloadError, match="beyond"):
        record_to_state(_corrupt(record, name, huge), state, "x")
    edge = record[name].numpy().copy()
    edge.flat[0] = FP16_MAX
    assert record_to_state(_corrupt(record, name, edge), state, "x")[name].flatten()[0] == FP16_MAX
    with pytest.raises(PayloadError, match="beyond"):
        record_to_state(_corrupt(record, name, edge), state, "x", max_abs=100.0)


def test_fortran_ordered_arrays_keep_their_values():
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    record = ArrayRecord({"w": Array(np.asfortranarray(state["w"].numpy()))})
    assert torch.equal(record_to_state(record, state, "x")["w"], state["w"])
