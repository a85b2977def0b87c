"""DP-SGD at a site, one patient as the unit of privacy.

Every step samples the site's training cases independently with probability ``q`` (Poisson
sampling, as the accountant assumes) and draws one patch from each sampled case, so a
patient appears at most once per step. Each case's gradient is computed alone, clipped to
``max_grad_norm``; the clipped gradients are summed, Gaussian noise of standard deviation
``noise_multiplier x max_grad_norm`` is added, and the sum is divided by the expected
number of cases per step (``q x n``). What the optimiser does with that noisy gradient
(Adam, the learning-rate schedule) is post-processing and costs no privacy.

The privacy spent is counted by Opacus's Rényi DP accountant (:func:`spent_epsilon`):
never by our own arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Privacy:
    """A phase's DP-SGD settings.

    Attributes:
        noise_multiplier: the noise's standard deviation over the clipping norm.
        max_grad_norm: each patient's gradient is clipped to this L2 norm.
        delta: the delta of the (epsilon, delta) guarantee a site reports.
        epsilon_budget: a site refuses a round after which its epsilon would exceed this
            (0: no budget).
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    epsilon_budget: float = 0.0


def sample_rate(batch_size: int, cases: int) -> float:
    """The chance that a step samples a given case: the batch size over the cases, at most 1."""
    return min(1.0, batch_size / max(cases, 1))


def spent_epsilon(noise_multiplier: float, rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, rate, steps)]
    return float(accountant.get_epsilon(delta))


def check_round(privacy: Privacy, cases: int, rate: float, steps_after: int) -> float:
    """The epsilon a site will have spent after this round, if it may train it.

    Raises:
        ValueError: if ``delta`` is not below one over the site's cases (the guarantee
            would allow one patient's data to leak whole), or the round would take the
            site past its epsilon budget.
    """
    if privacy.delta >= 1.0 / max(cases, 1):
        raise ValueError(
            f"dp_delta {privacy.delta:g}: expected below 1 / {cases} cases "
            f"({1.0 / max(cases, 1):.3g}) for a per-patient guarantee"
        )
    epsilon = spent_epsilon(privacy.noise_multiplier, rate, steps_after, privacy.delta)
    if privacy.epsilon_budget and epsilon > privacy.epsilon_budget:
        raise ValueError(
            f"privacy budget: this round would spend epsilon {epsilon:.2f} "
            f"(delta {privacy.delta:g}), over the task's dp_epsilon {privacy.epsilon_budget:g}"
        )
    return epsilon


def private_gradient(
    params: Sequence[torch.nn.Parameter],
    losses: Sequence[Callable[[], torch.Tensor]],
    privacy: Privacy,
    expected_cases: float,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """The noisy mean of the per-case clipped gradients of ``losses`` (one per sampled case).

    With no case sampled the result is noise alone, as DP-SGD requires.

    Returns:
        The gradient of each parameter, and each case's loss (which stays at the site).
    """
    total = [torch.zeros_like(p) for p in params]
    values = []
    for loss_of_case in losses:
        loss = loss_of_case()
        values.append(float(loss.detach()))
        found = torch.autograd.grad(loss, list(params), allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for g, p in zip(found, params, strict=True)
        ]
        norm = torch.sqrt(torch.stack([(g.float() ** 2).sum() for g in grads]).sum())
        factor = min(1.0, privacy.max_grad_norm / (float(norm) + 1e-12))
        for t, g in zip(total, grads, strict=True):
            t.add_(g, alpha=factor)
    std = privacy.noise_multiplier * privacy.max_grad_norm
    out = []
    for t in total:
        if std:
            t = t + torch.normal(0.0, std, t.shape, generator=generator).to(t)
        out.append(t / expected_cases)
    return out, values
