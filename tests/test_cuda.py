"""The CUDA code paths: device placement, mixed precision and streamed prediction on a GPU.

Marked ``cuda`` and skipped without one (the project's machines have none);
``scripts/gpu-check.sh`` runs them first where a GPU is lent.
"""

import numpy as np
import pytest
import torch

from core.bundle import Bundle
from core.data.transforms import Augmentation, Preprocessing
from core.device import autocast, native_bf16, pick_device
from core.inference import predict_volume
from core.local.training import LocalTrainSettings, train_phase
from tests.builders import nnunet_dataset
from tests.core.test_inference import _ct, _model
from tests.models import native_prep, tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_the_default_device_is_the_gpu_and_auto_trains_in_bfloat16_there():
    device = pick_device()
    assert device.type == "cuda"
    assert native_bf16(device) == torch.cuda.is_bf16_supported()
    with autocast(device, "auto"):
        y = torch.nn.Conv3d(1, 2, 3).to(device)(torch.rand(1, 1, 8, 8, 8, device=device))
    assert y.dtype == (torch.bfloat16 if native_bf16(device) else torch.float32)


def test_a_phase_trains_on_the_gpu(tmp_path):
    data = nnunet_dataset(tmp_path / "A", n_cases=3, structures=("liver", "spleen"))
    model = tiny_model(data.labels.structures).to("cuda")
    settings = LocalTrainSettings(
        steps=3, batch_size=2, augmentation=Augmentation(patch_size=(16,) * 3), progress=False
    )
    result = train_phase(
        model, "abdomen", data.labels, data.cases, data.cases[:1], native_prep(data), settings,
        train_encoder=True,
    )  # fmt: skip
    assert all(np.isfinite(result.losses)) and next(model.parameters()).is_cuda
    assert result.dice  # validation ran on the GPU too


def test_streamed_prediction_on_the_gpu_labels_as_on_the_cpu(tmp_path):
    torch.manual_seed(0)
    model = _model(("a", ("liver", "spleen")), ("b", ("spleen", "stomach"))).eval()
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0))
    path = _ct(tmp_path, (18, 12, 40))
    on_cpu = predict_volume(Bundle(model, prep, (16, 16, 16)), path).labels
    gpu = Bundle(model.to("cuda"), prep, (16, 16, 16))
    on_gpu = predict_volume(gpu, path, device=torch.device("cuda")).labels
    assert on_gpu.shape == on_cpu.shape
    assert (on_gpu == on_cpu).mean() > 0.999  # TF32 convolutions may flip a rare voxel
