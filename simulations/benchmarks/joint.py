"""The ``joint`` reference: one model trained on every task's data at once.

One encoder and one full decoder over the union of all tasks' structures learn from all
tasks' pooled training cases. Each task labels only its own structures, so a patch from
a task says nothing about the others': the loss is *marginal* (Shi et al., "Marginal
loss and exclusion loss for partially supervised multi-organ segmentation", 2021). The
probabilities of the classes a task does not label are summed into its background, and
MONAI's DiceCE loss scores that merged distribution against the task's labels. No
forgetting is possible: this is what a continual method would reach if it could keep
every task's data.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch

from core.data.transforms import Preprocessing
from core.device import pick_device
from core.local.training import (
    LocalTrainSettings,
    SegmentationLoss,
    check_patch,
    merged_logits,
    optimise,
    patch_batches,
)
from core.model import EncoderConfig
from simulations.benchmarks.baselines import GrowingSegmenter, StageLog
from simulations.task_data import TaskData


class HasStructures(Protocol):
    """A task of any kind (a scenario's, or one with its data)."""

    @property
    def structures(self) -> tuple[str, ...]:
        """The structures it labels."""


def all_structures(tasks: Iterable[HasStructures]) -> tuple[str, ...]:
    """Every task's structures, each once, in the order they first appear."""
    return tuple(dict.fromkeys(s for t in tasks for s in t.structures))


class MarginalLoss:
    """DiceCE (batch Dice) on the marginal distribution of a task's labelled classes.

    Args:
        labelled: per task, the model's channels of its structures (in its label order).
    """

    def __init__(self, labelled: Sequence[Sequence[int]]) -> None:
        self.labelled = [list(channels) for channels in labelled]
        self.dice_ce = SegmentationLoss()

    def __call__(self, logits: torch.Tensor, label: torch.Tensor, task: int) -> torch.Tensor:
        """The loss of a batch of task ``task``; ``label`` ``(B, 1, ...)`` indexes its classes."""
        out: torch.Tensor = self.dice_ce(merged_logits(logits.float(), self.labelled[task]), label)
        return out


class MixedBatches:
    """Batches drawn from every task's patch stream, a task chosen per step by its cases.

    A step's batch comes from one task (its label table and its structures); a task is
    drawn with probability proportional to its training cases, as from the pooled cases.
    :attr:`task` is the index of the last batch's task.
    """

    def __init__(
        self, tasks: Sequence[TaskData], prep: Preprocessing, settings: LocalTrainSettings
    ) -> None:
        self.streams = [
            patch_batches(t.train_cases, t.table, t.structures, prep, settings) for t in tasks
        ]
        self.weights = torch.tensor([float(len(t.train_cases)) for t in tasks])
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.task = -1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        self.task = int(torch.multinomial(self.weights, 1, generator=self.generator))
        return next(self.streams[self.task])


def joint(
    tasks: Sequence[TaskData],
    encoder_config: EncoderConfig,
    prep: Preprocessing,
    settings: LocalTrainSettings,
    device: torch.device | str | None = None,
    log: list[StageLog] | None = None,
) -> GrowingSegmenter:
    """Train one model over the union of the tasks' structures on all their cases.

    Args:
        tasks: the tasks; their pooled training cases are the data.
        encoder_config: encoder widths.
        prep: preprocessing.
        settings: optimiser, patch and seed; ``settings.steps`` is the total budget.
        device: where to train (default: CUDA when available).
        log: if given, gets one :class:`StageLog` of the whole run appended.

    Raises:
        ValueError: for no task, a task without training cases, or a patch that does not
            fit the encoder.
    """
    if not tasks or any(not t.train_cases for t in tasks):
        raise ValueError("joint: every task needs training cases")
    check_patch(settings.augmentation.patch_size, encoder_config.divisor)
    dev = pick_device(None if device is None else str(device))
    union = all_structures(tasks)
    torch.manual_seed(settings.seed)
    model = GrowingSegmenter(encoder_config, union).to(dev)
    channels = [[union.index(s) + 1 for s in t.structures] for t in tasks]
    loss = MarginalLoss(channels)
    batches = MixedBatches(tasks, prep, settings)

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return loss(model(image), label, batches.task)

    model.train()
    start = time.perf_counter()
    losses = optimise(list(model.parameters()), settings, batches, loss_of, dev, "joint")
    if log is not None:
        seconds = time.perf_counter() - start
        log.append(StageLog(0, "+".join(t.name for t in tasks), union, losses, [], seconds))
    return model
