import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from core.data.transforms import Preprocessing
from core.model import Decoder, EncoderConfig, Genotype
from core.payload import PayloadError, record_to_state, state_to_record
from core.protocol import ProtocolError, RoundConfig
from tests.conftest import TINY


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
