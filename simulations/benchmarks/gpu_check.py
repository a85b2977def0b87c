"""``csfl gpu-check``: what a CUDA GPU makes of this project, in a few minutes.

The project's own machines have no GPU; this is what to run when one is lent
(``scripts/gpu-check.sh`` runs it after the CUDA tests). Three figures, each with its wall
time and, on CUDA, its peak GPU memory (``torch.cuda.max_memory_allocated``):

- **the demo's first stage**: the base phase of the ``default`` scenario's first task as
  its sites train it (rounds x local steps at every site, one after another, here on its
  first site's phantoms), in the plan's precision (``auto``: bfloat16 on a GPU that has
  it), without Flower (whose simulation adds process start-ups, not GPU work);
- **one ``wholebody143`` training step**: its network (widths 32-320, 96^3 patch, the
  plan's batch, its first task's structures), after a warm-up step;
- **its prediction**: the ``wholebody143`` bundle (random weights, all 150 structures)
  predicting a synthetic CT, streamed, as ``csfl predict`` does.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.data import open_dataset, split_cases
from core.device import autocast
from core.inference import predict_volume
from core.local.training import SegmentationLoss, train_phase
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.phases import BASE
from server.plan import Plan, TaskPlan
from simulations.scenario import load_scenario

DEMO, WHOLE_BODY = "default", "wholebody143"


def timed(device: torch.device, work: Callable[[], object]) -> dict[str, float]:
    """Wall seconds of ``work`` and, on CUDA, the peak GPU memory it took (GB)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    work()
    if cuda:
        torch.cuda.synchronize(device)
    figures = {"seconds": round(time.perf_counter() - start, 2)}
    if cuda:
        figures["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return figures


def task_model(plan: Plan, task: TaskPlan) -> ContinualSegmenter:
    """The plan's encoder and ``task``'s full (teacher) decoder, random weights."""
    widths = plan.encoder.widths
    model = ContinualSegmenter(Encoder(plan.encoder))
    model.add_decoder(
        task.name, Decoder(widths, Genotype.teacher(len(widths) - 1), task.structures)
    )
    return model


def demo_first_stage(
    device: torch.device, folder: Path, steps: int | None = None
) -> dict[str, Any]:
    """The ``default`` scenario's base phase, trained on its first site's phantoms.

    ``steps`` replaces the stage's own count (rounds x local steps x sites) for a quick
    look; the figures say which it was.
    """
    from simulations.run import write_sites_once

    scenario = load_scenario(DEMO)
    plan, task = scenario.plan, scenario.plan.tasks[0]
    sites = scenario.sites_of(task.name)
    written = write_sites_once(scenario, folder / "sites", lambda _: None)
    dataset = open_dataset(written / sites[0].name / scenario.dataset_folder(task.name))
    cases, _ = split_cases(dataset.cases, plan.training.val_fraction, plan.training.seed)
    budget = task.of(BASE)
    total = steps or budget.rounds * budget.steps * len(sites)
    settings = plan.train_settings(task, steps=total)
    model = task_model(plan, task).to(device)
    prep = plan.preprocessing

    def train() -> None:
        train_phase(model, task.name, dataset.labels, cases, [], prep, settings, True)

    return {"steps": total, "precision": settings.precision, **timed(device, train)}


def whole_body_step(device: torch.device) -> dict[str, Any]:
    """One training step of the ``wholebody143`` network (after one that warms up)."""
    plan = load_scenario(WHOLE_BODY).plan
    task = plan.tasks[0]
    model = task_model(plan, task).to(device).train()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    batch = plan.training.batch_size
    image = torch.rand(batch, 1, *plan.patch, device=device)
    label = torch.randint(0, len(task.structures) + 1, (batch, 1, *plan.patch), device=device)
    loss_fn = SegmentationLoss()
    mixed = autocast(device, plan.training.precision)

    def step() -> None:
        with mixed:
            loss = loss_fn(model.organ_logits(image, task.name), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    step()  # allocations, kernels' first choice
    return {"patch": list(plan.patch), "batch": batch, **timed(device, step)}


def whole_body_prediction(
    device: torch.device, folder: Path, shape: tuple[int, int, int]
) -> dict[str, Any]:
    """The ``wholebody143`` bundle predicting a synthetic CT of ``shape`` voxels, streamed."""
    from core.bundle import load_bundle
    from simulations.benchmarks.hospital_scale import scale_bundle, synthetic_ct

    bundle_dir, structures = scale_bundle(WHOLE_BODY, folder / "bundle")
    ct = synthetic_ct(folder / "ct.nii", shape, (0.8, 0.8, 1.5))
    bundle = load_bundle(bundle_dir, device)

    def predict() -> None:
        predict_volume(bundle, ct, device=device, progress=False)

    return {"structures": structures, "ct": list(shape), **timed(device, predict)}


def gpu_check(
    folder: Path,
    device: torch.device,
    demo_steps: int | None = None,
    ct_shape: tuple[int, int, int] = (512, 512, 1000),
) -> dict[str, Any]:
    """Every figure of the module doc, with what it ran on."""
    about = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    return {
        **about,
        "demo_first_stage": demo_first_stage(device, folder, demo_steps),
        "wholebody143_step": whole_body_step(device),
        "wholebody143_prediction": whole_body_prediction(device, folder, ct_shape),
    }
