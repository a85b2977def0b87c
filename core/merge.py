"""What the merge reads and keeps: its settings, each decoder's calibration and its vote.

The rules that turn the votes into one label map are :mod:`core.merge_rules`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from core import anatomy
from core.vocabulary import Group

RULES = ("confidence", "highest_probability", "last_decoder")
# a key of models saved before the domain gate (the body-part scale's), read and ignored
RETIRED_KEYS = frozenset({"gate_margin_mm"})
UNSCORED_SKILL = 0.5  # q_d(k) of a structure its validation never scored


@dataclass(frozen=True)
class MergeSettings:
    """The merge rule and its knobs (stored in the bundle's manifest).

    Attributes:
        rule: one of :data:`RULES`.
        anomaly_weight: ``w_a`` in [0, 1]: how much a healthy-only decoder's anomaly score
            lowers its trust (0, the default, ignores the anomaly head: measured, the term
            changed nothing where the head had learnt nothing, and cost thorax_first's
            pelvis 0.026 Dice where a head flagged healthy organs).
        gating: silence decoders outside their domain.
        domain_factor: the domain score (1: the sites' own held-out threshold) above which
            a decoder's claim is silenced; above 1 leaves room for CTs a little unlike any
            site's.
        domain_weight: below it, a claim's trust is weighed by ``exp(-domain_weight *
            score * s_d / s)``, ``s_d`` the decoder's :attr:`DecoderVote.domain_scale` and
            ``s`` the median of the decoders' scales: of two claims the one whose slab lies
            nearer to what its sites saw, in the descriptor's own units, counts more.
    """

    rule: str = "confidence"
    anomaly_weight: float = 0.0
    gating: bool = True
    domain_factor: float = 2.0
    domain_weight: float = 2.5

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"merge rule {self.rule!r}: expected one of {', '.join(RULES)}")
        if not 0.0 <= self.anomaly_weight <= 1.0:
            raise ValueError(f"merge anomaly_weight {self.anomaly_weight}: expected 0 to 1")
        if not 1.0 <= self.domain_factor <= 1e6:
            raise ValueError(f"merge domain_factor {self.domain_factor}: expected 1 to 1e6")
        if not 0.0 <= self.domain_weight <= 100.0:
            raise ValueError(f"merge domain_weight {self.domain_weight}: expected 0 to 100")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "rule": self.rule,
            "anomaly_weight": self.anomaly_weight,
            "gating": self.gating,
            "domain_factor": self.domain_factor,
            "domain_weight": self.domain_weight,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MergeSettings:
        """From :meth:`to_json` (missing keys take their defaults).

        Raises:
            ValueError: naming an unknown key or a bad value.
        """
        data = {k: v for k, v in data.items() if k not in RETIRED_KEYS}
        unknown = sorted(set(data) - set(cls().to_json()))
        if unknown:
            raise ValueError(f"merge settings: unknown keys {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class Calibration:
    """What the calibrate and evaluate phases recorded about a decoder.

    Attributes:
        calibrated: its confidence and anomaly heads were trained and its domain fitted.
        skill: per structure, the Dice of its federated validation (empty: unknown).
        peers: per earlier task, the Dice of that task's decoder on the structures it
            shares with this one, scored by this task's sites on the same validation CTs
            as ``skill`` (``server.peers``; empty: none scored).
    """

    calibrated: bool = False
    skill: dict[str, float] = field(default_factory=dict)
    peers: dict[str, dict[str, float]] = field(default_factory=dict)

    def skills(self, structures: Sequence[str]) -> tuple[float, ...]:
        """``q_d(k)`` for each structure (see the module docstring)."""
        if not self.skill:
            return tuple(1.0 for _ in structures)
        return tuple(self.skill.get(s, UNSCORED_SKILL) for s in structures)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        skill = {k: round(v, 4) for k, v in self.skill.items()}
        peers = {t: {k: round(v, 4) for k, v in d.items()} for t, d in self.peers.items()}
        return {"calibrated": self.calibrated, "skill": skill, "peers": peers}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Calibration:
        """From :meth:`to_json`; ``None`` for a decoder never calibrated.

        Raises:
            ValueError: for a skill outside [0, 1].
        """
        if not data:
            return cls()
        skill = _dice_table(data.get("skill"), "skill")
        peers = {
            str(t): _dice_table(d, f"peers.{t}") for t, d in dict(data.get("peers") or {}).items()
        }
        return cls(bool(data["calibrated"]), skill, peers)


def _dice_table(data: Any, where: str) -> dict[str, float]:
    """Structure -> Dice from JSON, each in [0, 1].

    Raises:
        ValueError: for a value outside [0, 1].
    """
    table = {str(k): float(v) for k, v in dict(data or {}).items()}
    if bad := {k: v for k, v in table.items() if not 0.0 <= v <= 1.0}:
        raise ValueError(f"calibration {where} {bad}: expected Dice values in [0, 1]")
    return table


@dataclass(frozen=True)
class DecoderVote:
    """What the merge needs of one decoder's outputs over a batch of volumes or patches.

    Only the arg-max and the trust inputs are kept, never the per-structure logits: one
    byte or two and three floats per voxel, whatever the number of structures.

    Attributes:
        task: the decoder's task name.
        structures: its structures (label ``i`` is ``structures[i - 1]``).
        label: ``(B, 1, ...)`` its arg-max channel (0: background), an integer dtype.
        prob: ``(B, 1, ...)`` the softmax probability of that arg-max (float32).
        anomaly: ``(B, 1, ...)`` the sigmoid of its anomaly head.
        confidence: ``(B, 1, ...)`` the sigmoid of its confidence head.
        calibrated: whether its confidence and anomaly heads were trained.
        domain: ``(1 + K, Z)`` its domain scores (``core.domain``) of each slice for its
            background (row 0) and each structure; ``None``: it has no domain and speaks
            everywhere.
        skill: ``q_d(k)`` per structure (empty: 1 for all).
        foreground: ``(B, 1, ...)`` one minus the background probability, where kept
            (for probability maps; the merge does not use it).
        peers: per earlier task, the Dice of its decoder on structures this decoder also
            labels, scored on this decoder's validation CTs (:attr:`Calibration.peers`).
        domain_scale: the distance its domain score 1 stands for (``core.domain.domain_scale``).
            A score is a distance over the decoder's own threshold, and a threshold says
            how varied its sites' CTs were (head and neck slabs vary more than thoracic
            ones), which decides how far its gate reaches but not whose sites saw CTs more
            like this one: two decoders' claims are weighed on the distances themselves.
    """

    task: str
    structures: tuple[str, ...]
    label: torch.Tensor
    prob: torch.Tensor
    anomaly: torch.Tensor
    confidence: torch.Tensor
    calibrated: bool = False
    skill: tuple[float, ...] = ()
    foreground: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    domain_scale: float = 1.0
    peers: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_logits(
        cls,
        task: str,
        structures: tuple[str, ...],
        organ: torch.Tensor,
        anomaly: torch.Tensor,
        confidence: torch.Tensor,
        calibrated: bool = False,
        skill: tuple[float, ...] = (),
        foreground: bool = False,
    ) -> DecoderVote:
        """A vote from a decoder's logits (``organ``: ``(B, 1 + K, ...)``)."""
        probs = torch.softmax(organ.float(), dim=1)
        prob, arg = probs.max(dim=1, keepdim=True)
        return cls(
            task,
            structures,
            arg.to(label_dtype(len(structures))),
            prob,
            torch.sigmoid(anomaly.float()),
            torch.sigmoid(confidence.float()),
            calibrated,
            skill,
            1.0 - probs[:, :1] if foreground else None,
        )

    def part(self, lo: int, hi: int) -> DecoderVote:
        """The vote over slices ``lo:hi`` of the last axis."""
        fg = None if self.foreground is None else self.foreground[..., lo:hi]
        domain = None if self.domain is None else self.domain[..., lo:hi]
        maps = (self.label, self.prob, self.anomaly, self.confidence)
        label, prob, anomaly, confidence = (m[..., lo:hi] for m in maps)
        return replace(
            self,
            label=label,
            prob=prob,
            anomaly=anomaly,
            confidence=confidence,
            foreground=fg,
            domain=domain,
        )

    def domain_score(self) -> torch.Tensor | None:
        """``(B, 1, ...)``: the domain score of what it says at each voxel.

        ``None`` where it has no domain.
        """
        if self.domain is None:
            return None
        slices = torch.arange(self.label.shape[-1], device=self.label.device)
        return self.domain.to(self.label.device)[self.label.long(), slices]

    def proposal(self, structures: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Its arg-max as an output label (``structures`` from 1) and that label's probability."""
        ids = (0, *output_ids(self.structures, tuple(structures)))
        return torch.tensor(ids, device=self.label.device)[self.label.long()], self.prob

    def skill_table(self, structures: Sequence[str], device: torch.device) -> torch.Tensor:
        """``q_d(k)`` per output label (index 0, background, and unknown structures: 1)."""
        table = torch.ones(len(structures) + 1, device=device)
        skills = self.skill or tuple(1.0 for _ in self.structures)
        ids = output_ids(self.structures, tuple(structures))
        table[list(ids)] = torch.tensor(skills, device=device)
        return table

    def peer_tables(
        self, structures: Sequence[str], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Per earlier task, its decoder's peer Dice per output label (-1: not scored)."""
        index = {s: i for i, s in enumerate(structures, 1)}
        tables = {}
        for task, dice in self.peers.items():
            table = torch.full((len(structures) + 1,), -1.0, device=device)
            for structure, value in dice.items():
                if structure in index:
                    table[index[structure]] = value
            tables[task] = table
        return tables

    def trust(self, prob: torch.Tensor, anomaly_weight: float) -> torch.Tensor:
        """``p_d * c_d * (1 - w_a * a_d) ** h_d`` (see the module docstring); gate, skill apart."""
        if not self.calibrated:
            return prob
        trust = prob * self.confidence
        if anomaly_weight and not knows_lesions(self.structures):
            trust = trust * (1.0 - anomaly_weight * self.anomaly)
        return trust


@functools.lru_cache(maxsize=64)
def output_ids(own: tuple[str, ...], structures: tuple[str, ...]) -> tuple[int, ...]:
    """The output label of each of a decoder's structures (``structures`` numbered from 1).

    Cached: a volume is merged slab by slab, and a list search per structure and slab cost
    a 150-structure bundle 4% of its prediction time.
    """
    index = {s: i for i, s in enumerate(structures, 1)}
    return tuple(index[s] for s in own)


def label_dtype(n_structures: int) -> torch.dtype:
    """The smallest integer dtype for labels 0..``n_structures``."""
    return torch.uint8 if n_structures < 256 else torch.int16


def knows_lesions(structures: Sequence[str]) -> bool:
    """Whether a decoder segments any lesion (so it saw abnormal tissue in training)."""
    return any(anatomy.get(s).group == Group.LESION for s in structures)


def output_structures(decoders: Sequence[Sequence[str]]) -> list[str]:
    """One output label per structure, in order of first appearance over the decoders.

    Adding a task never renumbers the structures that earlier tasks brought.
    """
    out: list[str] = []
    for structures in decoders:
        out += [s for s in structures if s not in out]
    return out
