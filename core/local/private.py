"""DP-SGD at a site, one patient as the unit of privacy.

Every step samples the site's training cases independently with probability ``q`` (Poisson
sampling, as the accountant assumes) and draws one patch from each sampled case, so a
patient appears at most once per step. Each case's gradient is computed alone (all of a
step's cases in one batched pass, ``torch.func.vmap``: about the cost of one ordinary
backward pass, where a loop over the cases cost three times that), clipped to
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


class _Objective(torch.nn.Module):
    """``loss_of`` as a module's forward, for ``functional_call`` to differentiate.

    ``functional_call`` swaps the weights of ``network``, which ``loss_of`` runs, for the
    tensors being differentiated.
    """

    def __init__(self, network: torch.nn.Module, loss_of: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.network = network
        self.loss_of = loss_of

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.loss_of(image, label)


def per_case_gradients(
    network: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    chunk: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each case's gradient of its own loss, in one batched pass (``torch.func.vmap``).

    Args:
        network: the module that owns ``params`` and that ``loss_of`` runs.
        params: the parameters trained.
        loss_of: ``(image, label)`` of one case (a batch of 1) -> its loss; it must not
            write into tensors in place (MONAI's ``one_hot`` does: see
            :class:`core.local.training.SegmentationLoss`).
        images: ``(B, ...)`` one patch per case.
        labels: ``(B, ...)`` their labels.
        chunk: at most this many cases at once (Poisson sampling can draw many more cases
            than the expected batch; memory then grows no further than a batch's).

    Returns:
        Per parameter, the cases' gradients stacked ``(B, *shape)``; and the cases' losses.
    """
    from torch.func import functional_call, grad_and_value, vmap

    names = {id(p): name for name, p in network.named_parameters()}
    weights = {f"network.{names[id(p)]}": p.detach() for p in params}
    objective = _Objective(network, loss_of)

    def case_loss(
        w: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = functional_call(objective, w, (image[None], label[None]))
        return out

    per_case = vmap(
        grad_and_value(case_loss), in_dims=(None, 0, 0), randomness="different", chunk_size=chunk
    )
    grads, losses = per_case(weights, images, labels)
    return [grads[f"network.{names[id(p)]}"] for p in params], losses


def private_gradient(
    params: Sequence[torch.nn.Parameter],
    per_case: Sequence[torch.Tensor] | None,
    privacy: Privacy,
    expected_cases: float,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The noisy mean of the per-case clipped gradients.

    Args:
        params: the parameters trained.
        per_case: per parameter, the sampled cases' gradients ``(B, *shape)``
            (:func:`per_case_gradients`); ``None`` when the step sampled nobody, which
            leaves noise alone, as DP-SGD requires.
        privacy: the clipping norm and the noise.
        expected_cases: the sum is divided by it (the sampling rate x the cases).
        generator: the noise's random numbers.

    Returns:
        The gradient of each parameter.
    """
    total = [torch.zeros_like(p) for p in params]
    if per_case is not None:
        squares = torch.stack([(g.float() ** 2).flatten(1).sum(1) for g in per_case]).sum(0)
        factors = (privacy.max_grad_norm / (squares.sqrt() + 1e-12)).clamp(max=1.0)
        for t, g in zip(total, per_case, strict=True):
            t.add_((g * factors.view(-1, *[1] * (g.dim() - 1)).to(g)).sum(0))
    std = privacy.noise_multiplier * privacy.max_grad_norm
    out = []
    for t in total:
        if std:
            t = t + torch.normal(0.0, std, t.shape, generator=generator).to(t)
        out.append(t / expected_cases)
    return out
