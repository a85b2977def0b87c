"""Centrally trained continual-learning baselines: upper bound, fine-tuning, LwF and MiB.

They are scored like the method, by ``simulations.evaluate.score_model``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from core import anatomy
from core.data.transforms import Preprocessing
from core.device import pick_device
from core.local.training import (
    LocalTrainSettings,
    SegmentationLoss,
    check_patch,
    optimise,
    patch_batches,
)
from core.model import Decoder, Encoder, EncoderConfig, Genotype
from core.model.blocks import PointwiseConv3d, init_he
from server.plan import Plan
from simulations.task_data import TaskData

Method = Literal["finetune", "lwf", "mib"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass
class StageLog:
    """What one training stage did: its task, classes after it, losses and wall time."""

    stage: int
    task: str
    classes: tuple[str, ...]
    losses: list[float]
    kd_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class GrowingSegmenter(nn.Module):
    """One encoder and one full decoder whose organ head grows with new structures.

    The decoder is :class:`Decoder`'s teacher (full-width 3D) upsampling path and organ
    head; its anomaly and confidence heads play no part in the baselines and are dropped.
    Channel 0 is background, channel ``i`` is ``classes[i - 1]``; a structure keeps its
    channel for good, so a task that brings a known structure adds no channel.

    Args:
        encoder_config: the encoder's widths.
        structures: the first task's structures.
    """

    def __init__(self, encoder_config: EncoderConfig, structures: Sequence[str]) -> None:
        super().__init__()
        self.encoder = Encoder(encoder_config)
        widths = encoder_config.widths
        self.classes = tuple(dict.fromkeys(structures))
        decoder = Decoder(widths, Genotype.teacher(len(widths) - 1), self.classes)
        self.ups, self.stages, self.organ_head = decoder.ups, decoder.stages, decoder.organ_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Organ logits ``(B, 1 + len(classes), ...)`` (the decoder's path, as in ``Decoder``)."""
        features = self.encoder(x)
        y = features[-1]
        for up, stage, skip in zip(self.ups, self.stages, reversed(features[:-1]), strict=True):
            y = stage(torch.cat([up(y), skip], dim=1))
        logits: torch.Tensor = self.organ_head(y)
        return logits

    @torch.no_grad()
    def grow(self, structures: Sequence[str], mib_init: bool = False) -> tuple[str, ...]:
        """Add an output channel for each structure not yet known; returns those added.

        Old channels keep their weights exactly. New channels start He-initialised, or,
        with ``mib_init``, as MiB's background copies: the background's weights, and
        ``b_bg - log(N + 1)`` as the bias of the ``N`` new channels and of the background,
        so that background + new channels carry the old background's probability.
        """
        added = tuple(s for s in dict.fromkeys(structures) if s not in self.classes)
        if not added:
            return ()
        for name in added:
            anatomy.get(name)
        old = self.organ_head
        n_old, n_new = old.out_channels, len(added)
        head = PointwiseConv3d(old.in_channels, n_old + n_new)
        head.to(device=old.weight.device, dtype=old.weight.dtype)
        init_he(head)
        assert old.bias is not None and head.bias is not None
        head.weight[:n_old] = old.weight
        head.bias[:n_old] = old.bias
        if mib_init:
            shift = math.log(n_new + 1)
            head.weight[n_old:] = old.weight[0]
            head.bias[n_old:] = old.bias[0] - shift
            head.bias[0] = old.bias[0] - shift
        self.organ_head = head
        self.classes = (*self.classes, *added)
        return added


def _kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Per-voxel KL(teacher || student) from log-probabilities (exactly 0 when equal)."""
    kl = F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True)
    return kl.sum(dim=1).mean()


def _collapse(logits: torch.Tensor, merged: Sequence[int]) -> torch.Tensor:
    """Channel 0 becomes the log-sum-exp of channels ``merged``; the others follow in order."""
    keep = [c for c in range(logits.shape[1]) if c not in merged]
    lse = torch.logsumexp(logits[:, list(merged)], dim=1, keepdim=True)
    return torch.cat([lse, logits[:, keep]], dim=1)


def lwf_kd(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """LwF: ``T^2`` KL between the old model's and the new one's softmax over the old classes."""
    t, n = temperature, old_logits.shape[1]
    teacher = F.log_softmax(old_logits / t, dim=1)
    return _kl(teacher, F.log_softmax(logits[:, :n] / t, dim=1)) * t * t


def mib_kd(
    logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """MiB's unbiased KD: the old background matches the new background + new classes.

    The KL form of the paper's cross-entropy (same gradient, 0 at a perfect match). The
    paper uses no temperature; only at ``temperature`` 1 does MiB's initialisation make
    the term start at 0.
    """
    t, n = temperature, old_logits.shape[1]
    student = F.log_softmax(_collapse(logits / t, [0, *range(n, logits.shape[1])]), dim=1)
    return _kl(F.log_softmax(old_logits / t, dim=1), student) * t * t


def mib_ce(logits: torch.Tensor, label: torch.Tensor, background: Sequence[int]) -> torch.Tensor:
    """MiB's unbiased cross-entropy: label 0 scores the summed probability of ``background``.

    Args:
        logits: ``(B, C, ...)``.
        label: ``(B, 1, ...)`` channel indices, none of them in ``background`` but 0.
        background: channel 0 and the old classes the current data does not label.
    """
    keep = [c for c in range(logits.shape[1]) if c not in background]
    remap = torch.zeros(logits.shape[1], dtype=torch.long, device=logits.device)
    remap[keep] = torch.arange(1, len(keep) + 1, device=logits.device)
    return F.cross_entropy(_collapse(logits, background), remap[label[:, 0].long()])


class StageLoss:
    """The loss of a later stage of a sequential method; records its KD term per call.

    (The first stage is plain DiceCE training for every method: :func:`upper_bound`.)
    ``finetune``: DiceCE over all classes. ``lwf``: the same + ``kd_weight`` * :func:`lwf_kd`.
    ``mib``: :func:`mib_ce` + batch Dice over the current task's classes only (added for
    stability on small budgets; not in the paper) + ``kd_weight`` * :func:`mib_kd` at
    temperature 1, as in the paper (``temperature`` is LwF's).

    Args:
        method: ``finetune``, ``lwf`` or ``mib``.
        model: the model being trained.
        old: the previous stage's frozen model (``None`` for fine-tuning).
        current: channels of the current task's structures (labels ``1..K`` of a batch).
        kd_weight: weight of the KD term.
        temperature: LwF's KD temperature.
    """

    def __init__(
        self,
        method: Method,
        model: GrowingSegmenter,
        old: GrowingSegmenter | None,
        current: Sequence[int],
        kd_weight: float = 1.0,
        temperature: float = 2.0,
    ) -> None:
        self.method, self.model, self.old = method, model, old
        self.current = list(current)
        device = next(model.parameters()).device
        self.lookup = torch.tensor([0, *self.current], device=device)
        n = len(model.classes) + 1
        self.background = [c for c in range(n) if c not in self.current]
        self.kd_weight, self.temperature = kd_weight, temperature
        self.dice_ce = SegmentationLoss()
        self.dice = DiceLoss(batch=True)
        self.kd_values: list[float] = []

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Loss of a batch; ``label`` ``(B, 1, ...)`` indexes the task's structures from 1."""
        logits, label = self.model(image).float(), self.lookup[label.long()]  # losses in fp32
        if self.method == "mib":
            onehot = F.one_hot(label[:, 0].long(), logits.shape[1]).movedim(-1, 1).float()
            probs = logits.softmax(dim=1)
            dice = self.dice(probs[:, self.current], onehot[:, self.current])
            loss = mib_ce(logits, label, self.background) + dice
        else:
            loss = self.dice_ce(logits, label)
        kd = torch.zeros((), device=logits.device)
        if self.old is not None and self.method != "finetune":
            with torch.no_grad():
                old_logits = self.old(image).float()
            mib = self.method == "mib"
            kd = mib_kd(logits, old_logits) if mib else lwf_kd(logits, old_logits, self.temperature)
        self.kd_values.append(float(kd.detach()))
        out: torch.Tensor = loss + self.kd_weight * kd
        return out


def upper_bound(
    task: TaskData,
    encoder_config: EncoderConfig,
    prep: Preprocessing,
    settings: LocalTrainSettings,
    device: torch.device | str | None = None,
    log: list[StageLog] | None = None,
) -> GrowingSegmenter:
    """One full encoder + teacher decoder trained (DiceCE) on one task alone.

    This is also the first stage of every sequential method: before a second task
    arrives, fine-tuning, LwF and MiB all train one plain model on the first task (the
    papers' step 0), so with the same seed and recipe they share this very model.
    ``device`` defaults to CUDA when available; ``log``, if given, gets this run's
    :class:`StageLog` appended.

    Raises:
        ValueError: for a task without training cases or a patch that does not fit.
    """
    if not task.train_cases:
        raise ValueError(f"{task.name}: no training cases")
    check_patch(settings.augmentation.patch_size, encoder_config.divisor)
    dev = pick_device(None if device is None else str(device))
    torch.manual_seed(settings.seed)
    model = GrowingSegmenter(encoder_config, task.structures).to(dev)
    loss = SegmentationLoss()
    budget = task.budget(settings)
    batches = patch_batches(task.train_cases, task.table, task.structures, prep, budget)
    model.train()
    start = time.perf_counter()

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = loss(model(image), label)
        return out

    losses = optimise(list(model.parameters()), budget, batches, loss_of, dev, task.name)
    if log is not None:
        log.append(StageLog(0, task.name, model.classes, losses, [], time.perf_counter() - start))
    return model


def central_settings(plan: Plan, progress: bool = False) -> LocalTrainSettings:
    """The central methods' optimiser, batch, patch and seed: the plan's first task's.

    Each method sets its steps per task (:attr:`TaskData.steps`).
    """
    return plan.train_settings(progress=progress)


def sequential(
    method: Method,
    tasks: Sequence[TaskData],
    encoder_config: EncoderConfig,
    prep: Preprocessing,
    settings: LocalTrainSettings,
    kd_weight: float = 1.0,
    temperature: float = 2.0,
    on_stage: Callable[[int, GrowingSegmenter], None] | None = None,
    device: torch.device | str | None = None,
    log: list[StageLog] | None = None,
    first: GrowingSegmenter | None = None,
) -> GrowingSegmenter:
    """Train one growing-head model task after task, each on its own training cases only.

    A stage's labels mark only its task's structures; everything else is background.
    The whole network trains at every stage with ``settings`` (a fresh Adam each stage).
    The first stage is :func:`upper_bound` on the first task for every method: there is
    nothing to remember yet.

    Args:
        method: ``finetune``, ``lwf`` or ``mib`` (see :class:`StageLoss`).
        tasks: the tasks in order.
        encoder_config: encoder widths.
        prep: preprocessing.
        settings: each stage's optimiser, patch and seed, and its steps unless the task
            sets its own.
        kd_weight: weight of the KD term (``lwf``, ``mib``).
        temperature: LwF's KD temperature (MiB's KD runs at 1, as in the paper).
        on_stage: called as ``on_stage(stage_index, model)`` after each stage.
        device: where to train (default: CUDA when available).
        log: if given, gets one :class:`StageLog` per stage trained appended.
        first: the first stage's model, already trained (:func:`upper_bound` on
            ``tasks[0]`` with the same settings); copied, not trained again.

    Raises:
        ValueError: for an unknown method, no task, a task without training cases, or
            a patch that does not fit the encoder.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not tasks or any(not task.train_cases for task in tasks):
        raise ValueError("sequential: every task needs training cases")
    check_patch(settings.augmentation.patch_size, encoder_config.divisor)
    dev = pick_device(None if device is None else str(device))
    if first is None:
        model = upper_bound(tasks[0], encoder_config, prep, settings, dev, log)
    else:
        if first.classes != tuple(dict.fromkeys(tasks[0].structures)):
            raise ValueError(f"first stage: classes {first.classes}, expected {tasks[0].name}'s")
        model = copy.deepcopy(first).to(dev)
    if on_stage is not None:
        on_stage(0, model)
    for stage, task in enumerate(tasks[1:], 1):
        keep_old = method != "finetune"
        old = copy.deepcopy(model).eval().requires_grad_(False) if keep_old else None
        model.grow(task.structures, mib_init=method == "mib")
        current = [model.classes.index(s) + 1 for s in task.structures]
        loss = StageLoss(method, model, old, current, kd_weight, temperature)
        budget = task.budget(settings)
        batches = patch_batches(task.train_cases, task.table, task.structures, prep, budget)
        model.train()
        start = time.perf_counter()
        losses = optimise(list(model.parameters()), budget, batches, loss, dev, method)
        if log is not None:
            seconds = time.perf_counter() - start
            log.append(StageLog(stage, task.name, model.classes, losses, loss.kd_values, seconds))
        if on_stage is not None:
            on_stage(stage, model)
    return model
