import contextlib

import pytest
import torch

from core.device import autocast, native_bf16


def test_fp32_runs_as_is_and_bf16_runs_convolutions_in_bfloat16():
    cpu = torch.device("cpu")
    conv, x = torch.nn.Conv3d(1, 2, 3), torch.randn(1, 1, 4, 4, 4)
    assert isinstance(autocast(cpu, "fp32"), contextlib.nullcontext)
    with autocast(cpu, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(cpu, "auto"):
        assert conv(x).dtype == (torch.bfloat16 if native_bf16(cpu) else torch.float32)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"),
    [
        (False, False, False),  # AVX2: bf16 emulated, slower than fp32
        (True, False, True),  # AVX512-BF16 without AMX (Zen 4, Cooper Lake)
        (True, True, True),  # AMX (Sapphire Rapids and later)
    ],
)
def test_auto_trains_in_bf16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is native
    assert isinstance(autocast(cpu, "auto"), torch.autocast) is native
    assert isinstance(autocast(cpu, "bf16"), torch.autocast)  # named, it is honoured


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision 'fp16': expected one of"):
        autocast(torch.device("cpu"), "fp16")
