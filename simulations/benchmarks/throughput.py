"""How near the training step and prediction run to what this CPU does on convolutions.

``csfl profile`` reports, in one process: the FLOPs of one training step and of one
prediction window (PyTorch's own counter, ``torch.utils.flop_counter``), the GFLOP/s each
achieves, and the GFLOP/s of a plain 3D convolution of the same precision and threads (the
practical peak), as a share. The training step is broken down into data (a real patch
batch from phantom CTs, augmentation included), forward, loss, backward and optimiser.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.data import CaseArrays, write_nnunet
from core.data.transforms import Augmentation, Preprocessing
from core.device import autocast
from core.local.training import LocalTrainSettings, SegmentationLoss, patch_batches
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype
from simulations.benchmarks.network_profile import ORGANS
from simulations.phantoms import make_case

PEAK_CHANNELS = 64  # the convolution that sets the practical peak: 64 -> 64 channels, 3^3


def _flops(run: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def _seconds(run: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``repeats`` runs, after one that warms up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def conv_peak(side: int, precision: str, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a 64-channel 3x3x3 convolution at ``side``^3, forward and backward."""
    conv = torch.nn.Conv3d(PEAK_CHANNELS, PEAK_CHANNELS, 3, padding=1)
    x = torch.randn(1, PEAK_CHANNELS, side, side, side, requires_grad=True)
    cpu = torch.device("cpu")

    def step() -> None:
        with autocast(cpu, precision):
            out = conv(x)
        out.float().sum().backward()

    flops = _flops(step)
    seconds = _seconds(step, repeats)
    return {"gflop": flops / 1e9, "seconds": seconds, "gflops": flops / 1e9 / seconds}


def _phantom_batches(patch: int, size: int, folder: Path) -> Any:
    """Endless batches of 2 augmented patches from two phantom CTs written to ``folder``."""
    cases = []
    for i in range(2):
        case = make_case(i, ORGANS, "abdomen", size)
        cases.append(CaseArrays(f"case_{i:03d}", case.image, case.label, case.affine))
    dataset = write_nnunet(folder / "Dataset001_abdomen", ORGANS, cases)
    settings = LocalTrainSettings(
        batch_size=2, augmentation=Augmentation(patch_size=(patch,) * 3), progress=False
    )
    prep = Preprocessing(spacing_mm=(1.5, 1.5, 1.5))
    return patch_batches(dataset.cases, dataset.labels, ORGANS, prep, settings)


def training_step(
    config: EncoderConfig, patch: int, precision: str, repeats: int = 5
) -> dict[str, Any]:
    """FLOPs, seconds and GFLOP/s of a base step (encoder and decoder learn, batch 2)."""
    model = ContinualSegmenter(Encoder(config))
    decoder = model.add_decoder(
        "task", Decoder(config.widths, Genotype.teacher(len(config.widths) - 1), ORGANS)
    )
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    loss_fn = SegmentationLoss()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="csfl-throughput-") as tmp:
        batches = _phantom_batches(patch, patch + 16, Path(tmp))
        batch = next(batches)  # the cases are read and cached in memory here
    x, y = batch["image"], batch["label"]
    parts = dict.fromkeys(("data", "forward", "loss", "backward", "optimiser"), 0.0)

    def step(timed: bool = False) -> None:
        marks = [time.perf_counter()]
        with autocast(cpu, precision):
            logits = decoder.organ_logits(model.encoder(x))
        marks.append(time.perf_counter())
        loss = loss_fn(logits, y)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if timed:
            for name, a, b in zip(
                ("forward", "loss", "backward", "optimiser"), marks, marks[1:], strict=False
            ):
                parts[name] += (b - a) / repeats

    model.train()
    flops = _flops(step)
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        data_start = time.perf_counter()
        next(batches)
        parts["data"] += (time.perf_counter() - data_start) / repeats
        step(timed=True)
    seconds = (time.perf_counter() - start) / repeats
    compute = seconds - parts["data"]
    return {
        "gflop": flops / 1e9,
        "seconds": seconds,
        "gflops_without_data": flops / 1e9 / compute,
        "breakdown_seconds": parts,
    }


def prediction_window(
    config: EncoderConfig, roi: int, decoders: int, repeats: int = 3
) -> dict[str, float]:
    """FLOPs, seconds and GFLOP/s of one sliding window through the encoder and N decoders."""
    model = ContinualSegmenter(Encoder(config))
    for i in range(decoders):
        model.add_decoder(
            f"task{i}", Decoder(config.widths, Genotype.teacher(len(config.widths) - 1), ORGANS)
        )
    model.eval()
    x = torch.randn(1, config.in_channels, roi, roi, roi)

    def window() -> None:
        with torch.no_grad():
            model(x)

    flops = _flops(window)
    seconds = _seconds(window, repeats)
    return {"gflop": flops / 1e9, "seconds": seconds, "gflops": flops / 1e9 / seconds}


def profile_throughput(
    config: EncoderConfig, patch: int, roi: int, precision: str
) -> dict[str, Any]:
    """The training step's and a prediction window's GFLOP/s against the convolution peak.

    Raises:
        ValueError: for a patch or window the encoder cannot take (a multiple of its
            downsampling, at least twice it, so that its deepest level is not one voxel).
    """
    for name, side in (("--patch", patch), ("window", roi)):
        if side % config.divisor or side < 2 * config.divisor:
            raise ValueError(
                f"{name} {side}: expected a multiple of {config.divisor}, at least "
                f"{2 * config.divisor}, for encoder widths {list(config.widths)}"
            )
    train = training_step(config, patch, precision)
    predict = prediction_window(config, roi, 4)
    train_peak, predict_peak = conv_peak(patch, precision), conv_peak(roi, "fp32")
    return {
        "precision": precision,
        "threads": torch.get_num_threads(),
        "train_step": {
            **train,
            "conv_peak_gflops": train_peak["gflops"],
            "share_of_peak": train["gflops_without_data"] / train_peak["gflops"],
        },
        "predict_window_4_decoders": {
            **predict,
            "conv_peak_gflops": predict_peak["gflops"],
            "share_of_peak": predict["gflops"] / predict_peak["gflops"],
        },
    }
