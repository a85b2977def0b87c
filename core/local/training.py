"""Local training of one task's decoder at a site (the ``base`` and ``teacher`` phases).

With ``train_encoder`` (``base``, first task only) the encoder learns with the task's
decoder; otherwise a new full decoder learns on the frozen encoder (``teacher``). Both use
MONAI's DiceCE loss with batch Dice, foreground-favouring patches, Adam with a polynomial
learning-rate decay, and report validation Dice per structure. The shared optimiser loop
and patch stream also serve search, distillation and calibration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.losses import DiceCELoss
from tqdm import tqdm

from core.data import Case, LabelTable
from core.data.transforms import Augmentation, Preprocessing, training_transforms
from core.device import DEFAULT_PRECISION, autocast
from core.local.evaluation import evaluate_task
from core.local.private import Account, Prepare, Privacy, PrivateSteps
from core.model import ContinualSegmenter
from core.scores import ScoreSums


class NonFiniteError(RuntimeError):
    """A phase's loss or gradients turned NaN or infinite: it stops and sends nothing."""


class SegmentationLoss:
    """MONAI's Dice + cross-entropy with batch Dice, computed in fp32 under any autocast.

    CPU autocast leaves softmax and sums in bfloat16; the loss's softmax, its Dice sums over
    every voxel of the batch and their gradients want fp32 (CUDA autocast does the same).

    Args:
        per_case: one-hot the labels by comparison, which ``torch.func.vmap`` can batch
            (the per-case gradients of DP-SGD), instead of MONAI's in-place ``one_hot``;
            the same loss.
    """

    def __init__(self, per_case: bool = False) -> None:
        self.per_case = per_case
        self.dice_ce = DiceCELoss(to_onehot_y=not per_case, softmax=True, batch=True)

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The loss of ``(B, C, ...)`` logits against ``(B, 1, ...)`` integer labels."""
        with torch.autocast(logits.device.type, enabled=False):
            if self.per_case:
                classes = torch.arange(logits.shape[1], device=label.device)
                label = (label.long() == classes.view(1, -1, *[1] * (label.dim() - 2))).float()
            out: torch.Tensor = self.dice_ce(logits.float(), label)
        return out


def check_finite(
    loss: torch.Tensor, params: Sequence[torch.nn.Parameter], desc: str, step: int, steps: int
) -> None:
    """Stop a phase at the first step whose loss or gradients are not finite.

    Raises:
        NonFiniteError: naming the phase, the step and what turned non-finite.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not torch.isfinite(loss.detach()).all():
        what = "loss"
    elif grads and not torch.isfinite(torch.stack([g.detach().norm() for g in grads]).sum()):
        what = "gradients"
    else:
        return
    raise NonFiniteError(
        f"{desc}: the {what} turned non-finite at step {step + 1} of {steps}; "
        'nothing is sent (try precision = "fp32" or a lower learning rate)'
    )


@dataclass(frozen=True)
class LocalTrainSettings:
    """Budget and optimiser of one local training phase.

    Attributes:
        steps: optimiser steps.
        batch_size: patches per step (at least 2: batch Dice and CPU speed both want it).
        lr: Adam's initial learning rate, decayed polynomially to 0.
        weight_decay: Adam's L2 penalty.
        augmentation: patch size and augmentation.
        seed: seeds weights' initial shuffling, patch sampling and augmentation.
        progress: show a progress bar.
        schedule_start: steps already taken in a longer schedule (federated rounds
            continue one polynomial decay across rounds).
        schedule_total: length of that schedule (default: ``steps``).
        precision: ``fp32``, ``bf16`` (mixed, :func:`core.device.autocast`) or ``auto``.
    """

    steps: int = 250
    batch_size: int = 2
    lr: float = 1e-2
    weight_decay: float = 3e-5
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    progress: bool = True
    schedule_start: int = 0
    schedule_total: int | None = None
    precision: str = DEFAULT_PRECISION

    def lr_factor(self, step: int) -> float:
        """nnU-Net's polynomial decay, ``(1 - t / T) ** 0.9``, at local step ``step``."""
        total = self.schedule_total or self.steps
        return float(max(0.0, 1.0 - (self.schedule_start + step) / max(total, 1)) ** 0.9)


@dataclass
class PhaseResult:
    """What local training did: losses, time, and validation Dice per structure."""

    train_encoder: bool
    steps: int
    seconds: float
    losses: list[float]
    scores: ScoreSums

    @property
    def dice(self) -> dict[str, float | None]:
        """Mean validation Dice per structure."""
        return self.scores.means("dice")

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of one optimiser step, data loading included."""
        return self.seconds / max(self.steps, 1)

    def metrics(self) -> dict[str, Any]:
        """Aggregate figures only (what may leave a site)."""
        return {
            "train_encoder": self.train_encoder,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "final_loss": self.losses[-1] if self.losses else None,
            "dice": self.dice,
            "hd95": self.scores.means("hd95"),
        }


def patch_dataset(
    cases: Sequence[Case],
    table: LabelTable,
    classes: Sequence[str],
    prep: Preprocessing,
    settings: LocalTrainSettings,
) -> CacheDataset:
    """The cases, preprocessed once and cached; each read draws augmented patches anew."""
    aug = settings.augmentation
    chain = training_transforms(prep, aug, table, seed=settings.seed, classes=classes)
    # no copy per read: the random transforms never write into a cached volume (tested in
    # tests/core/data/test_crop_centres.py), and a copy cost most of a large CT's batch
    return CacheDataset(
        [{"case": c} for c in cases], chain, num_workers=0, progress=False, copy_cache=False
    )


def patch_batches(
    cases: Sequence[Case],
    table: LabelTable,
    classes: Sequence[str],
    prep: Preprocessing,
    settings: LocalTrainSettings,
) -> Iterator[dict[str, Any]]:
    """Endless batches of augmented patches; preprocessed volumes are cached in memory."""
    return dataset_batches(patch_dataset(cases, table, classes, prep, settings), settings)


def dataset_batches(
    dataset: CacheDataset, settings: LocalTrainSettings
) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches of :func:`patch_dataset`'s patches."""
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        dataset,
        batch_size=max(1, settings.batch_size // settings.augmentation.samples_per_case),
        shuffle=True,
        num_workers=0,
        collate_fn=list_data_collate,
        generator=generator,
    )
    while True:
        yield from loader


def optimise(
    params: list[torch.nn.Parameter],
    settings: LocalTrainSettings,
    batches: Iterator[dict[str, Any]],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    desc: str,
) -> list[float]:
    """Adam with the polynomial schedule over ``settings.steps`` batches; returns the losses.

    Raises:
        NonFiniteError: at the first step whose loss or gradients are not finite (the
            weights are left as the step before it made them).
    """
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc=desc, disable=not settings.progress)
    mixed = autocast(device, settings.precision)  # decided once, entered every step
    for step in bar:
        batch = next(batches)
        with mixed:
            loss = loss_of(batch["image"].to(device), batch["label"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        check_finite(loss, params, desc, step, settings.steps)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def private_optimise(
    params: list[torch.nn.Parameter],
    settings: LocalTrainSettings,
    private: PrivateSteps,
    desc: str,
    account: Account | None = None,
) -> list[float]:
    """:func:`optimise` under DP-SGD (:mod:`core.local.private`): one patient per unit.

    ``account`` is told what the run will spend before its first step (and may refuse
    it). Returns each step's mean loss over the sampled cases (NaN for a step that sampled
    none), which stays at the site.

    Raises:
        NonFiniteError: at the first step whose loss or gradients are not finite.
    """
    if account is not None:
        account([private.mechanism(settings.steps)], len(private.cases))
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc=f"{desc} (DP)", disable=not settings.progress)
    for step, (grads, mean) in zip(bar, private, strict=False):
        apply_gradients(params, grads)
        check_finite(torch.nan_to_num(torch.tensor(mean)), params, desc, step, settings.steps)
        optimizer.step()
        schedule.step()
        losses.append(mean)
    return losses


def apply_gradients(params: Sequence[torch.nn.Parameter], grads: Sequence[torch.Tensor]) -> None:
    """Set each parameter's gradient (a DP-SGD step's noisy one)."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype)


def private_steps(
    network: torch.nn.Module,
    params: list[torch.nn.Parameter],
    loss_of: Callable[..., torch.Tensor],
    dataset: CacheDataset,
    settings: LocalTrainSettings,
    privacy: Privacy,
    prepare: Prepare | None = None,
    generator: torch.Generator | None = None,
) -> PrivateSteps:
    """DP-SGD's gradients over ``dataset``'s patients with a loop's batch and seed.

    In fp32 whatever the loop's precision (:class:`core.local.private.PrivateSteps`).
    """
    return PrivateSteps(
        network,
        params,
        loss_of,
        dataset,
        settings.batch_size,
        privacy,
        generator or torch.Generator().manual_seed(settings.seed),
        prepare,
    )


@dataclass(frozen=True)
class PrivateLoop:
    """How a local loop runs under DP-SGD (:func:`local_loop`).

    Attributes:
        privacy: clipping and noise.
        network: owns the parameters trained and is what ``loss_of`` runs.
        loss_of: one case's loss (it must batch under ``vmap``; see
            :func:`core.local.private.per_case_gradients`).
        account: told what the loop will spend before its first step.
        prepare: alters a step's patches before the per-case losses (see
            :class:`core.local.private.PrivateSteps`).
        generator: sampling and noise (default: seeded by the loop's seed).
    """

    privacy: Privacy
    network: torch.nn.Module
    loss_of: Callable[..., torch.Tensor]
    account: Account | None = None
    prepare: Prepare | None = None
    generator: torch.Generator | None = None


def local_loop(
    params: list[torch.nn.Parameter],
    settings: LocalTrainSettings,
    dataset: CacheDataset,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str,
    private: PrivateLoop | None = None,
) -> list[float]:
    """A phase's optimisation over ``dataset``; returns the losses.

    :func:`optimise` over shuffled batches, or under DP-SGD (``private``)
    :func:`private_optimise` over Poisson-sampled patients.
    """
    if private is None:
        device = next(iter(params)).device
        return optimise(params, settings, dataset_batches(dataset, settings), loss_of, device, desc)
    steps = private_steps(
        private.network,
        params,
        private.loss_of,
        dataset,
        settings,
        private.privacy,
        private.prepare,
        private.generator,
    )
    return private_optimise(params, settings, steps, desc, private.account)


def merged_logits(logits: torch.Tensor, labelled: Sequence[int]) -> torch.Tensor:
    """Logits whose softmax is the marginal distribution of a partially labelled task.

    Channel 0 becomes the log-sum-exp of the background and every channel not in
    ``labelled``; the ``labelled`` channels follow in that order. So the softmax of the
    result is ``[p_0 + sum of unlabelled p, p_labelled...]``.

    Args:
        logits: ``(B, C, ...)`` over background and ``C - 1`` classes.
        labelled: the channels (1..C-1) the task labels.
    """
    chosen = list(labelled)
    rest = [c for c in range(logits.shape[1]) if c not in chosen]
    background = torch.logsumexp(logits[:, rest], dim=1, keepdim=True)
    return torch.cat([background, logits[:, chosen]], dim=1)


def check_patch(patch: Sequence[int], divisor: int) -> None:
    """Patch sides must be multiples of the encoder's total downsampling.

    Raises:
        ValueError: if they are not.
    """
    if any(side % divisor for side in patch):
        raise ValueError(f"patch {tuple(patch)}: sides must be multiples of {divisor}")


def train_phase(
    model: ContinualSegmenter,
    task: str,
    table: LabelTable,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    prep: Preprocessing,
    settings: LocalTrainSettings,
    train_encoder: bool = False,
    proximal_mu: float = 0.0,
    partial: bool = False,
    privacy: Privacy | None = None,
    account: Account | None = None,
) -> PhaseResult:
    """Train a task's decoder (and, in ``base``, the encoder) on a site's cases.

    The dataset's label table may hold more structures than the decoder predicts; those
    count as background. ``proximal_mu`` > 0 adds FedProx's term ``mu / 2 * ||w - w0||^2``
    (``w0``: the weights this training started from, the round's global model), which
    keeps a site's many local steps from drifting towards its own data. With ``partial``
    the table may label only some of the decoder's structures (at least one): the loss is
    marginal (:func:`merged_logits`: the others count with the background), and only
    those are validated. With ``privacy`` it trains under DP-SGD, one patient as the unit
    (:func:`private_optimise`, told to ``account``; FedProx's term, which is not a
    patient's, is then refused).

    Raises:
        ValueError: if ``privacy`` comes with ``proximal_mu``, ``train_encoder`` does not
            fit the model's state (a frozen encoder
            to train, or a trainable one to keep fixed), the label table lacks one
            of the decoder's structures, or the patch does not fit the encoder depth.
    """
    decoder = model.decoder(task)
    labelled = [s for s in decoder.structures if s in table.structures]
    missing = [s for s in decoder.structures if s not in table.structures]
    if missing and not (partial and labelled):
        raise ValueError(f"{task}: the dataset does not label {missing} ({table.structures})")
    if train_encoder and model.encoder.frozen:
        raise ValueError("base phase: the encoder is already frozen")
    if not train_encoder and not model.encoder.frozen:
        raise ValueError("teacher phase: freeze the encoder first (it is trained only in base)")
    patch = settings.augmentation.patch_size
    check_patch(patch, model.encoder.config.divisor)
    if not train_cases:
        raise ValueError(f"{task}: no training cases")
    if privacy is not None and proximal_mu:
        raise ValueError("proximal_mu: FedProx's term is not clipped per patient; not with DP")

    torch.manual_seed(settings.seed)
    device = next(model.parameters()).device
    params = list(decoder.parameters())
    if train_encoder:
        params += list(model.encoder.parameters())
    loss_fn = SegmentationLoss(per_case=privacy is not None)
    dataset = patch_dataset(train_cases, table, labelled, prep, settings)
    channels = [decoder.structures.index(s) + 1 for s in labelled]
    anchor = [p.detach().clone() for p in params] if proximal_mu else []

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = decoder.organ_logits(model.encoder(image)).float()  # marginals in fp32
        if missing:
            logits = merged_logits(logits, channels)
        out: torch.Tensor = loss_fn(logits, label)
        if anchor:
            drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, anchor, strict=True))
            out = out + proximal_mu / 2 * drift
        return out

    model.train()
    start = time.perf_counter()
    desc = f"{'base' if train_encoder else 'teacher'} {task}"
    private = None if privacy is None else PrivateLoop(privacy, model, loss_of, account)
    losses = local_loop(params, settings, dataset, loss_of, desc, private)
    seconds = time.perf_counter() - start
    scores = (
        evaluate_task(model, task, val_cases, table, prep, patch, device, labelled)
        if val_cases
        else ScoreSums()
    )
    return PhaseResult(train_encoder, settings.steps, seconds, losses, scores)
