"""A site's local architecture search: weights and architecture parameters of the supernet.

Weight steps (DiceCE on the site's patches) alternate with architecture steps (DiceCE
plus the cost term ``relu(expected / budget - 1)``) after a warm-up of weight steps only;
the network and its derivation under the budget are :mod:`core.model.supernet`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from core.data import Case, LabelTable, split_cases
from core.data.transforms import Preprocessing
from core.local.private import Account, Privacy, PrivateSteps
from core.local.training import (
    LocalTrainSettings,
    SegmentationLoss,
    apply_gradients,
    check_finite,
    check_patch,
    patch_batches,
    patch_dataset,
    private_steps,
)
from core.model.encoder import Encoder
from core.model.supernet import SuperNet


@dataclass(frozen=True)
class LocalSearchSettings:
    """Budget of a local search.

    Attributes:
        train: steps, batch, learning rate and patches of the weight updates.
        budget: the decoder size (parameters) the cost term aims below.
        arch_lr: Adam learning rate of the architecture parameters.
        cost_weight: weight of the cost term ``relu(expected / budget - 1)``.
        warmup: share of the steps that update weights only, before architecture steps.
    """

    train: LocalTrainSettings
    budget: int
    arch_lr: float = 3e-2
    cost_weight: float = 1.0
    warmup: float = 0.3

    def steps_architecture(self, step: int) -> bool:
        """Whether local step ``step`` also steps the architecture (after the warm-up)."""
        return step >= self.warmup * self.train.steps


@dataclass
class SearchResult:
    """What a local search did."""

    weight_losses: list[float]
    arch_losses: list[float]
    expected_parameters: list[float]
    seconds: float


def search_phase(
    encoder: Encoder,
    supernet: SuperNet,
    table: LabelTable,
    cases: Sequence[Case],
    prep: Preprocessing,
    settings: LocalSearchSettings,
    privacy: Privacy | None = None,
    account: Account | None = None,
) -> SearchResult:
    """Alternate supernet weight steps and architecture steps on two halves of the cases.

    Weights learn on one half (DiceCE), the architecture on the other (DiceCE plus the
    cost term), as in differentiable architecture search; the first ``warmup`` share of
    the steps trains weights only. With ``privacy`` both kinds of step run under DP-SGD,
    one patient as the unit (the weights never leave the site, but the architecture that
    does is trained on them), told to ``account`` first; the cost term, which depends on
    no patient, adds its exact gradient to the architecture's noisy one.

    Raises:
        ValueError: if the encoder is not frozen or there are no cases.
    """
    if not encoder.frozen:
        raise ValueError("search phase: the encoder must be frozen")
    if not cases:
        raise ValueError("search phase: no training cases")
    train = settings.train
    check_patch(train.augmentation.patch_size, encoder.config.divisor)
    torch.manual_seed(train.seed)
    device = next(supernet.parameters()).device
    weights_half, arch_half = (
        split_cases(cases, 0.5, train.seed) if len(cases) > 1 else (cases, cases)
    )
    structures = supernet.structures
    loss_fn = SegmentationLoss(per_case=privacy is not None)
    w_opt = torch.optim.Adam(
        supernet.weight_parameters(), lr=train.lr, weight_decay=train.weight_decay
    )
    w_sched = torch.optim.lr_scheduler.LambdaLR(w_opt, train.lr_factor)
    a_opt = torch.optim.Adam(supernet.arch_parameters(), lr=settings.arch_lr, betas=(0.5, 0.999))
    result = SearchResult([], [], [], 0.0)
    start = time.perf_counter()
    supernet.train()
    if privacy is not None:

        def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                features = encoder(image)
            out: torch.Tensor = loss_fn(supernet(features), label)
            return out

        streams = [
            private_steps(
                supernet,
                params,
                loss_of,
                patch_dataset(half, table, structures, prep, train),
                train,
                privacy,
                generator=torch.Generator().manual_seed(train.seed + i),
            )
            for i, (half, params) in enumerate(
                [
                    (weights_half, supernet.weight_parameters()),
                    (arch_half, supernet.arch_parameters()),
                ]
            )
        ]
        _private_search(supernet, streams, settings, (w_opt, w_sched), a_opt, result, account)
        result.seconds = time.perf_counter() - start
        return result
    weight_batches = patch_batches(weights_half, table, structures, prep, train)
    arch_batches = patch_batches(
        arch_half, table, structures, prep, replace(train, seed=train.seed + 1)
    )
    for step in range(train.steps):
        batch = next(weight_batches)
        with torch.no_grad():
            features = encoder(batch["image"].to(device))
        loss = loss_fn(supernet(features), batch["label"].to(device))
        w_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        check_finite(loss, supernet.weight_parameters(), "search", step, train.steps)
        w_opt.step()
        w_sched.step()
        result.weight_losses.append(float(loss.detach()))
        if settings.steps_architecture(step):
            batch = next(arch_batches)
            with torch.no_grad():
                features = encoder(batch["image"].to(device))
            expected = supernet.expected_parameters()
            cost = torch.relu(expected / settings.budget - 1.0)
            arch_loss = (
                loss_fn(supernet(features), batch["label"].to(device)) + settings.cost_weight * cost
            )
            a_opt.zero_grad(set_to_none=True)
            arch_loss.backward()  # type: ignore[no-untyped-call]
            check_finite(arch_loss, supernet.arch_parameters(), "search", step, train.steps)
            a_opt.step()
            result.arch_losses.append(float(arch_loss.detach()))
            result.expected_parameters.append(float(expected.detach()))
    result.seconds = time.perf_counter() - start
    return result


def _private_search(
    supernet: SuperNet,
    streams: list[PrivateSteps],
    settings: LocalSearchSettings,
    weights: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    a_opt: torch.optim.Optimizer,
    result: SearchResult,
    account: Account | None,
) -> None:
    """:func:`search_phase`'s loop under DP-SGD, the weights' and architecture's noisy steps."""
    train = settings.train
    weight_steps, arch_stream = iter(streams[0]), iter(streams[1])
    if account is not None:
        arch_steps = sum(map(settings.steps_architecture, range(train.steps)))
        runs = [streams[0].mechanism(train.steps), streams[1].mechanism(arch_steps)]
        account(runs, min(len(s.cases) for s in streams))
    (w_opt, w_sched), arch = weights, supernet.arch_parameters()
    for step in range(train.steps):
        grads, mean = next(weight_steps)
        apply_gradients(supernet.weight_parameters(), grads)
        check_finite(
            torch.nan_to_num(torch.tensor(mean)),
            supernet.weight_parameters(),
            "search",
            step,
            train.steps,
        )
        w_opt.step()
        w_sched.step()
        result.weight_losses.append(mean)
        if settings.steps_architecture(step):
            grads, mean = next(arch_stream)
            expected = supernet.expected_parameters()
            cost = settings.cost_weight * torch.relu(expected / settings.budget - 1.0)
            exact = torch.autograd.grad(cost, arch, allow_unused=True)
            apply_gradients(
                arch, [g if e is None else g + e for g, e in zip(grads, exact, strict=True)]
            )
            check_finite(torch.nan_to_num(torch.tensor(mean)), arch, "search", step, train.steps)
            a_opt.step()
            result.arch_losses.append(mean + float(cost.detach()))
            result.expected_parameters.append(float(expected.detach()))
