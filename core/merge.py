"""The anomaly-aware confidence merge: one label map from every decoder's outputs.

Structures with the same vocabulary name from different decoders are one output label.
The ``confidence`` rule, at every voxel:

1. Each decoder ``d`` proposes its arg-max label ``l_d`` (background or one of its
   structures). Its trust in what it says about a structure ``k`` is::

       t_d(k) = g_d * p_d * c_d * q_d(k) * (1 - w_a * a_d) ** h_d

   ``p_d`` is the softmax probability of its arg-max; ``c_d`` is the sigmoid of its
   confidence head (the probability that its own label is right) once the decoder is
   calibrated, else 1 (on the ``default`` scenario the product of both beat each alone);
   ``q_d(k)`` is its skill on ``k``: the Dice it reached on ``k`` in its federated
   validation (1 where none was recorded, 0.5 for a structure never scored), so a
   decoder that never learnt ``k`` has no say about it; ``a_d`` is the sigmoid of its
   anomaly head; ``h_d`` is 1 for a decoder that knows no lesion (it saw only healthy
   tissue, so tissue unlike its training data makes its label doubtful) and 0 for one
   that segments lesions; ``g_d`` is 1 inside the decoder's domain (where its domain score,
   how unlike the CT region is to the regions its sites trained it on over their own
   held-out threshold, ``core.domain``, is at most ``domain_factor``) and 0 outside: a
   gated decoder neither proposes nor objects.
2. A foreground proposal ``k`` of ``d`` stands unless another decoder ``e`` that also
   knows ``k`` says something else (background, or a structure that does not lie inside
   ``k``) with more trust about ``k``, ``t_e(k) > t_d(k)``. A structure that one
   decoder alone knows is never vetoed; it can only lose the voxel to another structure.
3. Among the standing proposals the most trusted wins, each trust ``t_d(l_d)`` times the
   least of ``q_d(l_e)`` over the other standing proposals ``l_e`` that ``d`` knows: to
   claim ``l_d`` is to deny ``l_e``, and a decoder that never learnt ``l_e`` labels its
   voxels as a neighbour's (measured on ``default`` at the demo's budget: the whole-body
   decoder, aorta Dice 0, took the thoracic decoder's aorta for heart and lung, 0.665
   merged against 0.723 alone; with the term 0.723). If a standing proposal lies
   inside the winner's structure (a tumour in its organ, by the vocabulary's
   containment), the most trusted such proposal takes its place. Nothing stands:
   background.

Decoders are visited in task-name order, so ties (and the result) do not depend on the
order of the decoders. Two simpler rules serve as baselines: ``highest_probability``
(the highest arg-max softmax probability among foreground proposals wins) and
``last_decoder`` (the latest decoder that says foreground wins).
"""

from __future__ import annotations

import functools
import statistics
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
    """What the calibrate phase recorded about a decoder.

    Attributes:
        calibrated: its confidence and anomaly heads were trained and its domain fitted.
        skill: per structure, the Dice of its federated validation (empty: unknown).
    """

    calibrated: bool = False
    skill: dict[str, float] = field(default_factory=dict)

    def skills(self, structures: Sequence[str]) -> tuple[float, ...]:
        """``q_d(k)`` for each structure (see the module docstring)."""
        if not self.skill:
            return tuple(1.0 for _ in structures)
        return tuple(self.skill.get(s, UNSCORED_SKILL) for s in structures)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        skill = {k: round(v, 4) for k, v in self.skill.items()}
        return {"calibrated": self.calibrated, "skill": skill}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Calibration:
        """From :meth:`to_json`; ``None`` for a decoder never calibrated.

        Raises:
            ValueError: for a skill outside [0, 1].
        """
        if not data:
            return cls()
        skill = {str(k): float(v) for k, v in dict(data.get("skill") or {}).items()}
        if bad := {k: v for k, v in skill.items() if not 0.0 <= v <= 1.0}:
            raise ValueError(f"calibration skill {bad}: expected Dice values in [0, 1]")
        return cls(bool(data["calibrated"]), skill)


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
        ids = [0] + [structures.index(s) + 1 for s in self.structures]
        return torch.tensor(ids, device=self.label.device)[self.label.long()], self.prob

    def skill_table(self, structures: Sequence[str], device: torch.device) -> torch.Tensor:
        """``q_d(k)`` per output label (index 0, background, and unknown structures: 1)."""
        table = torch.ones(len(structures) + 1, device=device)
        skills = self.skill or tuple(1.0 for _ in self.structures)
        for s, q in zip(self.structures, skills, strict=True):
            table[structures.index(s) + 1] = q
        return table

    def trust(self, prob: torch.Tensor, anomaly_weight: float) -> torch.Tensor:
        """``p_d * c_d * (1 - w_a * a_d) ** h_d`` (see the module docstring); gate, skill apart."""
        if not self.calibrated:
            return prob
        trust = prob * self.confidence
        if anomaly_weight and not knows_lesions(self.structures):
            trust = trust * (1.0 - anomaly_weight * self.anomaly)
        return trust


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


def merge(
    votes: Sequence[DecoderVote], structures: Sequence[str], settings: MergeSettings
) -> torch.Tensor:
    """Merge decoders' outputs into one label map ``(B, 1, ...)`` indexing ``structures``.

    Raises:
        ValueError: for no decoders, or a decoder structure missing from ``structures``.
    """
    if not votes:
        raise ValueError("merge: no decoders")
    missing = sorted({s for v in votes for s in v.structures} - set(structures))
    if missing:
        raise ValueError(f"merge: output structures lack {missing}")
    if settings.rule == "highest_probability":
        return _highest_probability(votes, structures)
    if settings.rule == "last_decoder":
        return _last_decoder(votes, structures)
    return _confidence(votes, structures, settings)


def _highest_probability(votes: Sequence[DecoderVote], structures: Sequence[str]) -> torch.Tensor:
    best_score: torch.Tensor | None = None
    best_label: torch.Tensor | None = None
    for vote in sorted(votes, key=lambda v: v.task):
        label, prob = vote.proposal(structures)
        score = torch.where(label > 0, prob, torch.full_like(prob, -1.0))
        if best_score is None or best_label is None:
            best_score, best_label = score, label
        else:
            wins = score > best_score
            best_score = torch.where(wins, score, best_score)
            best_label = torch.where(wins, label, best_label)
    assert best_label is not None
    return best_label


def _last_decoder(votes: Sequence[DecoderVote], structures: Sequence[str]) -> torch.Tensor:
    out: torch.Tensor | None = None
    for vote in votes:  # in catalog order: the latest decoder is last
        label, _ = vote.proposal(structures)
        out = label if out is None else torch.where(label > 0, label, out)
    assert out is not None
    return out


def _containment(structures: Sequence[str], device: torch.device) -> torch.Tensor:
    """``within[a, b]``: output label ``a`` lies inside output label ``b`` (0: background)."""
    return _containment_table(tuple(structures)).to(device)


@functools.lru_cache(maxsize=8)
def _containment_table(structures: tuple[str, ...]) -> torch.Tensor:
    # cached: a volume is merged slab by slab, and 150 structures make 22,500 pairs
    n = len(structures) + 1
    within = torch.zeros(n, n, dtype=torch.bool)
    for a, inner in enumerate(structures, 1):
        for b, outer in enumerate(structures, 1):
            within[a, b] = anatomy.is_within(inner, outer)
    return within


def _confidence(
    votes: Sequence[DecoderVote], structures: Sequence[str], settings: MergeSettings
) -> torch.Tensor:
    ordered = sorted(votes, key=lambda v: v.task)
    scales = [v.domain_scale for v in ordered if v.domain is not None]
    unit = statistics.median(scales) if scales else 1.0
    labels, base, trusts, gates, knows, skills = [], [], [], [], [], []
    for vote in ordered:
        label, prob = vote.proposal(structures)
        labels.append(label)
        skills.append(vote.skill_table(structures, label.device))
        trust = vote.trust(prob, settings.anomaly_weight)
        score = vote.domain_score() if settings.gating else None
        if score is not None:
            trust = trust * torch.exp(-settings.domain_weight * score * vote.domain_scale / unit)
        base.append(trust)
        trusts.append(base[-1] * skills[-1][label])
        everywhere = torch.ones_like(label, dtype=torch.bool)
        gates.append(everywhere if score is None else score <= settings.domain_factor)
        known = torch.zeros(len(structures) + 1, dtype=torch.bool, device=label.device)
        known[[structures.index(s) + 1 for s in vote.structures]] = True
        knows.append(known)
    within = _containment(structures, labels[0].device)
    standing = []
    for d, (label, trust) in enumerate(zip(labels, trusts, strict=True)):
        ok = gates[d] & (label > 0)
        for e, other in enumerate(labels):
            if e != d:
                disagrees = knows[e][label] & (other != label) & ~within[other, label]
                ok = ok & ~(gates[e] & disagrees & (base[e] * skills[e][label] > trust))
        standing.append(ok)
    contest = [
        trust * _doubt(d, standing, labels, knows, skills, within) for d, trust in enumerate(trusts)
    ]
    best = _most_trusted(standing, labels, contest)
    for _ in structures:  # a containment chain is at most this long
        inside = [ok & within[label, best] for ok, label in zip(standing, labels, strict=True)]
        refined = _most_trusted(inside, labels, contest)
        if torch.equal(refined, best):
            break
        best = torch.where(refined > 0, refined, best)
    return best


def _doubt(
    d: int,
    standing: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    knows: Sequence[torch.Tensor],
    skills: Sequence[torch.Tensor],
    within: torch.Tensor,
) -> torch.Tensor:
    """How far decoder ``d`` may be believed where its proposal meets other standing ones.

    Claiming ``l_d`` where another decoder's ``l_e`` also stands denies ``l_e``; a denial is
    worth ``d``'s skill on ``l_e`` where ``d`` knows ``l_e`` (a decoder that never learnt a
    structure labels its voxels as a neighbour's), and 1 where it does not (it has no
    opinion). The least of these over the other standing proposals.
    """
    doubt = torch.ones_like(skills[d][labels[d]])
    for e, (ok, other) in enumerate(zip(standing, labels, strict=True)):
        if e == d:
            continue
        related = within[other, labels[d]] | within[labels[d], other] | (other == labels[d])
        denies = ok & standing[d] & knows[d][other] & ~related
        doubt = torch.where(denies, torch.minimum(doubt, skills[d][other]), doubt)
    return doubt


def _most_trusted(
    candidates: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    trusts: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The label of the most trusted candidate at each voxel (0 where none is a candidate)."""
    best_trust = torch.full_like(trusts[0], -1.0)
    best = torch.zeros_like(labels[0])
    for ok, label, trust in zip(candidates, labels, trusts, strict=True):
        wins = ok & (trust > best_trust)
        best_trust = torch.where(wins, trust, best_trust)
        best = torch.where(wins, label, best)
    return best
