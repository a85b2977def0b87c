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


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision 'fp16': expected one of"):
        autocast(torch.device("cpu"), "fp16")
