"""DP-SGD at a site, one patient as the unit of privacy, and the site's own ledger of it.

Every step samples the site's training cases independently with probability ``q`` (Poisson
sampling, as the accountant assumes) and draws one patch from each sampled case, so a
patient appears at most once per step. Each case's gradient is computed alone (all of a
step's cases in one batched pass, ``torch.func.vmap``: about the cost of one ordinary
backward pass, where a loop over the cases cost three times that), clipped to
``max_grad_norm``; the clipped gradients are summed, Gaussian noise of standard deviation
``noise_multiplier x max_grad_norm`` is added, and the sum is divided by the expected
number of cases per step (``q x n``). What the optimiser does with that noisy gradient
(Adam, the learning-rate schedule) is post-processing and costs no privacy.

Every phase that reads a private task's patients (training, search, distillation,
calibration) trains this way, and a site counts what each round spends in its
:class:`PrivacyLedger`, kept in its private cache: the task's epsilon is the composition of
every mechanism in it, by Opacus's Rényi DP accountant (:func:`spent_epsilon`), never by our
own arithmetic, and never from what the server says it has run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from core.io import atomic_write_json
from core.model.blocks import standard_format
from core.records import Record, setting

Mechanism = tuple[float, float, int]
"""One DP-SGD run as the accountant sees it: noise multiplier, sampling rate, steps."""
Account = Callable[[Sequence[Mechanism], int], object]
"""Told a local run's mechanisms and its fewest patients before its first step; may refuse
(raise), and then nothing is trained (a site's :meth:`PrivacyLedger.spend`)."""
LEDGER_ENTRIES = 100_000  # a ledger longer than this is not one this code wrote


@dataclass(frozen=True)
class Privacy(Record):
    """A task's DP-SGD settings (plan keys ``dp_*``), the same for every phase of it.

    Attributes:
        noise_multiplier: the noise's standard deviation over the clipping norm (0: no DP).
        max_grad_norm: each patient's gradient is clipped to this L2 norm.
        delta: the delta of the (epsilon, delta) guarantee a site reports.
        epsilon_budget: a site refuses a round after which its epsilon would exceed this
            (0: no budget).
    """

    noise_multiplier: float = setting(
        0.0,
        lo=0.0,
        hi=100.0,
        key="dp_noise_multiplier",
        doc="DP-SGD in every phase that reads the site's patients, one patient as the unit: "
        "the noise over the clipping norm (0: off)",
    )
    max_grad_norm: float = setting(
        1.0,
        lo=1e-6,
        hi=1e6,
        key="dp_max_grad_norm",
        doc="DP-SGD: each patient's gradient is clipped to this norm",
    )
    delta: float = setting(
        1e-5,
        lo=1e-12,
        hi=0.1,
        key="dp_delta",
        doc="DP-SGD: the delta of the guarantee; below 1 / cases",
    )
    epsilon_budget: float = setting(
        0.0,
        lo=0.0,
        hi=1000.0,
        key="dp_epsilon",
        doc="DP-SGD: a site refuses a round that would take it past this epsilon (0: none)",
    )

    @property
    def on(self) -> bool:
        """Whether the task trains under DP-SGD."""
        return self.noise_multiplier > 0


def sample_rate(batch_size: int, cases: int) -> float:
    """The chance that a step samples a given case: the batch size over the cases, at most 1."""
    return min(1.0, batch_size / max(cases, 1))


def spent_epsilon(history: Sequence[Mechanism], delta: float) -> float:
    """Epsilon at ``delta`` after every mechanism of ``history`` (Opacus's RDP accountant).

    The mechanisms compose: their Rényi divergences add up order by order, and runs of the
    same noise and rate add their steps (as Opacus's ``RDPAccountant`` sums them), so a
    long ledger costs one divergence per kind of run.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    steps: dict[tuple[float, float], int] = {}
    for noise, rate, count in history:
        if count > 0:
            key = (float(noise), float(rate))
            steps[key] = steps.get(key, 0) + int(count)
    if not steps:
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(
        compute_rdp(q=rate, noise_multiplier=noise, steps=count, orders=orders)
        for (noise, rate), count in steps.items()
    )
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


class PrivacyLedger:
    """What a site has spent on each task: every DP-SGD run it did, kept in its own file.

    The site counts each round before it trains it, from what it does itself (its noise,
    its sampling rate, its steps), so a server that replays a round, or says it is at
    round 1 when it is not, cannot make the site under-count. A round that is run again
    (after a crash or a restart) is counted again: its first output may have left the site.
    The file never leaves the site; a ledger that cannot be read stops every private round
    rather than start afresh from zero.

    Args:
        path: the ledger's JSON file (created on the first private round).
        ceiling: the site's own limit (0: none): it trains no task without DP, and no
            round that would take a task past this epsilon, whatever the plan says.
    """

    def __init__(self, path: Path, ceiling: float = 0.0) -> None:
        self.path = path
        self.ceiling = ceiling

    def check_policy(self, task: str, privacy: Privacy) -> None:
        """Refuse a task without DP at a site that insists on it.

        Raises:
            ValueError: naming the site's limit.
        """
        if self.ceiling and not privacy.on:
            raise ValueError(
                f"{task}: this site trains only under differential privacy (max-epsilon "
                f"{self.ceiling:g}) and the task has none (dp_noise_multiplier 0)"
            )

    def _unreadable(self) -> ValueError:
        return ValueError(
            f"privacy ledger {self.path}: unreadable; private rounds stop until it is restored"
        )

    def _read(self) -> dict[str, list[list[Any]]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise self._unreadable() from None
        if not isinstance(data, dict) or not all(
            isinstance(runs, list) and len(runs) <= LEDGER_ENTRIES for runs in data.values()
        ):
            raise self._unreadable()
        return data

    def _history(self, data: Mapping[str, list[list[Any]]], task: str) -> list[Mechanism]:
        try:
            return [(float(s), float(q), int(n)) for _, s, q, n in data.get(task, [])]
        except (TypeError, ValueError):
            raise self._unreadable() from None

    def history(self, task: str) -> list[Mechanism]:
        """The mechanisms spent on ``task`` so far."""
        return self._history(self._read(), task)

    def spend(
        self, task: str, what: str, privacy: Privacy, cases: int, runs: Sequence[Mechanism]
    ) -> float:
        """Count ``runs`` (about to happen) against ``task``; the epsilon after them.

        Args:
            task: the task.
            what: the phase and round, kept with each run.
            privacy: the task's settings.
            cases: the fewest patients any of the runs samples from.
            runs: each DP-SGD run of the round.

        Raises:
            ValueError: if ``delta`` is not below one over ``cases`` (the guarantee would
                allow one patient's data to leak whole), or the round would take the site
                past the task's budget or its own ceiling (nothing is counted then).
        """
        if privacy.delta >= 1.0 / max(cases, 1):
            raise ValueError(
                f"dp_delta {privacy.delta:g}: expected below 1 / {cases} cases "
                f"({1.0 / max(cases, 1):.3g}) for a per-patient guarantee"
            )
        data = self._read()
        epsilon = spent_epsilon([*self._history(data, task), *runs], privacy.delta)
        limits = [
            (privacy.epsilon_budget, "the task's dp_epsilon"),
            (self.ceiling, "the site's max-epsilon"),
        ]
        for limit, whose in limits:
            if limit and epsilon > limit:
                raise ValueError(
                    f"privacy budget: this round would spend epsilon {epsilon:.2f} "
                    f"(delta {privacy.delta:g}), over {whose} {limit:g}"
                )
        data.setdefault(task, []).extend([what, s, q, n] for s, q, n in runs)
        atomic_write_json(self.path, data)
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

    def forward(self, *case: torch.Tensor) -> torch.Tensor:
        return self.loss_of(*case)


def per_case_gradients(
    network: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    loss_of: Callable[..., torch.Tensor],
    batch: Sequence[torch.Tensor],
    chunk: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each case's gradient of its own loss, in one batched pass (``torch.func.vmap``).

    Args:
        network: the module that owns ``params`` and that ``loss_of`` runs.
        params: the parameters trained.
        loss_of: one case's tensors (each a batch of 1) -> its loss; it must not write
            into tensors in place (MONAI's ``one_hot`` does: see
            :class:`core.local.training.SegmentationLoss`) nor branch on their values.
        batch: ``(B, ...)`` tensors, one row per case (its patch, its label, ...).
        chunk: at most this many cases at once (Poisson sampling can draw many more cases
            than the expected batch; memory then grows no further than a batch's).

    Returns:
        Per parameter, the cases' gradients stacked ``(B, *shape)``; and the cases' losses.
    """
    from torch.func import functional_call, grad_and_value, vmap

    names = {id(p): name for name, p in network.named_parameters()}
    weights = {f"network.{names[id(p)]}": p.detach() for p in params}
    objective = _Objective(network, loss_of)

    def case_loss(w: dict[str, torch.Tensor], *case: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(objective, w, tuple(t[None] for t in case))
        return out

    dims = (None, *[0] * len(batch))
    per_case = vmap(
        grad_and_value(case_loss), in_dims=dims, randomness="different", chunk_size=chunk
    )
    with standard_format():
        grads, losses = per_case(weights, *batch)
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


class CaseStreams(Protocol):
    """The patients' patch streams: ``len``, and ``[i]`` draws a new patch of patient ``i``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


Prepare = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]
"""A step's patches and labels -> the tensors each case's loss reads (each row one case's)."""


@dataclass
class PrivateSteps:
    """DP-SGD's noisy gradients, step after step, over one set of a site's patients.

    Args:
        network: owns ``params`` and is what ``loss_of`` runs.
        params: the parameters trained.
        loss_of: one case's loss (see :func:`per_case_gradients`).
        cases: the patients' patch streams; ``cases[i]`` draws a new patch of patient ``i``
            (a dict, or a list whose first item is used).
        batch_size: the expected cases per step (the sampling rate is this over the cases).
        privacy: clipping and noise.
        generator: sampling and noise.
        prepare: turns the step's patches and labels into what ``loss_of`` reads (default:
            the two of them), for a phase that alters its patches before the loss.
    """

    network: torch.nn.Module
    params: list[torch.nn.Parameter]
    loss_of: Callable[..., torch.Tensor]
    cases: CaseStreams
    batch_size: int
    privacy: Privacy
    generator: torch.Generator
    prepare: Prepare | None = None

    @property
    def rate(self) -> float:
        """The chance a step samples a given patient."""
        return sample_rate(self.batch_size, len(self.cases))

    def mechanism(self, steps: int) -> Mechanism:
        """What ``steps`` of these cost, for the ledger."""
        return (self.privacy.noise_multiplier, self.rate, steps)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], float]]:
        """Each step's gradient per parameter and the sampled cases' mean loss (NaN: none)."""
        device = next(self.network.parameters()).device
        count = len(self.cases)
        while True:
            chosen = torch.nonzero(torch.rand(count, generator=self.generator) < self.rate)
            per_case, mean = None, float("nan")
            if len(chosen):
                patches = [self._draw(i) for i in chosen.flatten().tolist()]
                images = torch.stack([p["image"] for p in patches]).to(device)
                labels = torch.stack([p["label"] for p in patches]).to(device)
                batch = (images, labels) if self.prepare is None else self.prepare(images, labels)
                # fp32 whatever the phase's precision: under bf16 autocast the vmap'd
                # backward fails ("expected scalar type BFloat16 but found Float", torch 2.13)
                with torch.autocast(device.type, enabled=False):
                    per_case, seen = per_case_gradients(
                        self.network, self.params, self.loss_of, batch, self.batch_size
                    )
                mean = float(seen.detach().mean())
            expected = self.rate * count
            yield (
                private_gradient(self.params, per_case, self.privacy, expected, self.generator),
                mean,
            )

    def _draw(self, index: int) -> Mapping[str, torch.Tensor]:
        drawn = self.cases[index]
        out: Mapping[str, torch.Tensor] = drawn[0] if isinstance(drawn, list) else drawn
        return out
