"""Server optimisers (FedOpt): the round's checked average taken as a pseudo-gradient step.

FedAvg replaces the global model by the sites' average. FedOpt (Reddi et al., "Adaptive
Federated Optimization", 2021) treats ``sent - average`` as a gradient and gives it to an
optimiser on the server: ``sgd`` with ``server_lr`` 1 and no momentum is FedAvg itself,
``sgd`` with momentum is FedAvgM (Hsu et al., 2019), ``adam`` is FedAdam. A server
learning rate above 1 extrapolates the sites' common direction: K sites that each take
s local steps otherwise move the model about as far as s pooled steps, not K x s.

The update rules are PyTorch's own optimisers, stepping a server-side copy of the model.
Flower's ``FedAvgM`` / ``FedAdam`` strategies are not used: they average raw replies
themselves (one ArrayRecord, weighted by a count the reply carries), so they cannot run
after this server's checks and robust rule (``server.aggregate``).

An optimiser lives for one phase's rounds of one task: its momentum starts at zero when
the phase starts, and also when an interrupted phase is run again from its first round.
"""

from __future__ import annotations

import torch

from server.plan import AggregationSettings
from server.robust import State

ADAM_BETAS = (0.9, 0.99)  # FedAdam's defaults (Reddi et al.; Flower's FedAdam)
ADAM_EPS = 1e-3  # FedAdam's tau: how adaptive the step is


class ServerOptimizer:
    """Steps a global model by the rounds' averages, per record key (encoder, decoder).

    Args:
        settings: the task's aggregation settings (``server_optimizer``, ``server_lr``,
            ``server_momentum``).
    """

    def __init__(self, settings: AggregationSettings) -> None:
        self.settings = settings
        self.params: dict[str, dict[str, torch.Tensor]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @property
    def is_fedavg(self) -> bool:
        """Whether the update is the average itself (no server state is kept)."""
        s = self.settings
        return s.server_optimizer == "sgd" and s.server_lr == 1.0 and s.server_momentum == 0.0

    def step(self, key: str, sent: State, average: State) -> dict[str, torch.Tensor]:
        """The next global state of record ``key`` from the state sent and the sites' average.

        Floating-point tensors move by the optimiser; others (counters) take the average.
        """
        if self.is_fedavg:
            return dict(average)
        params = self.params.get(key)
        if params is None or any(
            not torch.equal(params[name], sent[name].float()) for name in params
        ):
            params = self._start(key, sent)  # a new phase, or a model this one did not send
        for name, param in params.items():
            param.grad = param.detach() - average[name].to(param.dtype)
        self.optimizers[key].step()
        return {
            name: params[name].detach().to(value.dtype).clone() if name in params else value
            for name, value in average.items()
        }

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per record key, the optimiser's tensors (``<parameter>/<entry>``) to keep.

        Nothing for plain FedAvg; the parameters themselves are the last round's states.
        """
        out: dict[str, dict[str, torch.Tensor]] = {}
        for key, params in self.params.items():
            kept = self.optimizers[key].state
            out[key] = {
                f"{name}/{entry}": value.detach().clone()
                for name, param in params.items()
                for entry, value in kept.get(param, {}).items()
                if isinstance(value, torch.Tensor)
            }
        return out

    def restore(self, key: str, sent: State, kept: State) -> None:
        """Take up :meth:`state`'s tensors for record ``key``, whose next round sends ``sent``."""
        params = self._start(key, sent)
        state = self.optimizers[key].state
        for flat, value in kept.items():
            name, entry = flat.rsplit("/", 1)
            if name not in params:
                raise ValueError(f"server optimiser state names {name!r}, not a parameter")
            state[params[name]][entry] = value.clone()

    def _start(self, key: str, sent: State) -> dict[str, torch.Tensor]:
        """Server-side parameters (fp32) for ``sent``'s floating-point tensors, fresh state."""
        params = {
            name: value.detach().float().clone().requires_grad_(True)
            for name, value in sent.items()
            if value.is_floating_point()
        }
        s = self.settings
        values = list(params.values())
        optimizer: torch.optim.Optimizer
        if s.server_optimizer == "adam":
            optimizer = torch.optim.Adam(values, lr=s.server_lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        else:
            optimizer = torch.optim.SGD(values, lr=s.server_lr, momentum=s.server_momentum)
        self.params[key], self.optimizers[key] = params, optimizer
        return params
