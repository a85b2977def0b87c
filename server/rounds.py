"""A phase's finished rounds, kept in the catalog while the phase is in flight.

A run that stops in the middle of a phase (the server restarted, a round failed for
good) resumes that phase from its last finished round, not from its first. After each
round but the last, :class:`RoundStore` keeps what the round produced: the averaged
states, the states kept apart, the accepted replies, the traffic ledger so far and the
server optimiser's state (``checkpoints/<task>/<phase>.round<N>``, hashed like every
checkpoint). With it goes a fingerprint of what the round was given: the round's
configuration (round number aside), the phase's settings and the states it sent. A
resumed phase takes a kept round only when the fingerprint matches, so a changed plan,
encoder or earlier phase starts the phase over. The files go when the phase ends: its
own checkpoint or journal entry then stands for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.model.encoder import state_sha256
from core.phases.spec import PhaseSpec, RoundResult
from core.protocol import RoundConfig
from core.records import RecordError
from server.catalog import Catalog, CatalogError
from server.messages import Ledger

log = logging.getLogger(__name__)

_SEP = "/"  # tensor names hold dots, never slashes


def fingerprint(
    cfg: RoundConfig, settings: Mapping[str, Any], sent: Mapping[str, Mapping[str, torch.Tensor]]
) -> str:
    """What a round was given, as a hash: its config without the round, settings, states."""
    given = {k: v for k, v in cfg.to_json().items() if k != "round"}
    document = {
        "config": given,
        "settings": dict(settings),
        "sent": {key: state_sha256(state) for key, state in sorted(sent.items())},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class KeptRound:
    """A finished round as :class:`RoundStore` gives it back."""

    result: RoundResult[Any]
    ledger: Ledger
    optimizer: dict[str, dict[str, torch.Tensor]]


@dataclass
class RoundStore:
    """One task's kept rounds in its catalog."""

    catalog: Catalog
    task: str

    def _name(self, phase: str, rnd: int) -> str:
        return f"{phase}.round{rnd}"

    def save(
        self,
        phase: str,
        rnd: int,
        given: str,
        result: RoundResult[Any],
        ledger: Ledger,
        optimizer: Mapping[str, Mapping[str, torch.Tensor]],
    ) -> None:
        """Keep round ``rnd`` of ``phase`` (``given``: its :func:`fingerprint`)."""
        tensors: dict[str, torch.Tensor] = {}
        for key, state in result.states.items():
            tensors |= {_SEP.join(("states", key, n)): t for n, t in state.items()}
        apart_sites: dict[str, list[str]] = {}
        for key, by_site in result.apart.items():
            apart_sites[key] = list(by_site)
            for i, state in enumerate(by_site.values()):
                tensors |= {_SEP.join(("apart", key, str(i), n)): t for n, t in state.items()}
        for key, state in optimizer.items():
            tensors |= {_SEP.join(("optimizer", key, n)): t for n, t in state.items()}
        meta = {
            "given": given,
            "replies": {site: reply.to_json() for site, reply in result.replies.items()},
            "rejected": dict(result.rejected),
            "bytes_up": dict(result.bytes_up),
            "clipped": dict(result.clipped),
            "apart_sites": apart_sites,
            "ledger": ledger.to_json(),
        }
        self.catalog.save_checkpoint(self.task, self._name(phase, rnd), tensors, meta)

    def load(self, phase: PhaseSpec[Any, Any], rnd: int, given: str) -> KeptRound | None:
        """Round ``rnd`` of ``phase`` if it was kept for what it is given now, else ``None``."""
        name = self._name(phase.name, rnd)
        if not self.catalog.has_checkpoint(self.task, name):
            return None
        try:
            tensors, meta = self.catalog.load_checkpoint(self.task, name)
            if meta.get("given") != given:
                log.info(
                    "%s/%s: round %d was kept for other inputs; sent again", self.task, name, rnd
                )
                return None
            states: dict[str, dict[str, torch.Tensor]] = {}
            apart: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
            optimizer: dict[str, dict[str, torch.Tensor]] = {}
            sites = {k: list(v) for k, v in meta["apart_sites"].items()}
            for flat_name, tensor in tensors.items():
                kind, key, rest = flat_name.split(_SEP, 2)
                if kind == "states":
                    states.setdefault(key, {})[rest] = tensor
                elif kind == "optimizer":
                    optimizer.setdefault(key, {})[rest] = tensor
                else:
                    index, tensor_name = rest.split(_SEP, 1)
                    site = sites[key][int(index)]
                    apart.setdefault(key, {}).setdefault(site, {})[tensor_name] = tensor
            replies = {s: phase.reply_type.from_json(r) for s, r in meta["replies"].items()}
            result = RoundResult(
                states,
                replies,
                {str(k): str(v) for k, v in meta["rejected"].items()},
                {str(k): int(v) for k, v in meta["bytes_up"].items()},
                apart,
                {str(k): float(v) for k, v in meta.get("clipped", {}).items()},
            )
            return KeptRound(result, Ledger.from_json(meta["ledger"]), optimizer)
        except (CatalogError, RecordError, KeyError, ValueError, TypeError) as e:
            log.warning("%s/%s: kept round unreadable (%s); sent again", self.task, name, e)
            return None

    def drop(self, phase: str) -> None:
        """Forget every kept round of ``phase`` (it has ended)."""
        self.catalog.drop_checkpoints(self.task, f"{phase}.round")
