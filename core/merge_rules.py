"""The merge rules: one label map from every decoder's votes (:mod:`core.merge`).

Structures with the same vocabulary name from different decoders are one output label.
The ``confidence`` rule, at every voxel:

1. Each decoder ``d`` proposes its arg-max label ``l_d`` (background or one of its
   structures). How far it is from home there is ``f_d = exp(-w * s_d)``, ``s_d`` its
   domain score (how unlike the CT region is to the regions its sites trained it on, over
   their own held-out threshold, ``core.domain``) in the descriptor's units, ``w`` the
   ``domain_weight``; it is *at home* (``g_d = 1``) where ``s_d`` is at most
   ``domain_factor``. Its skill ``q_d(k)`` is the Dice it reached on ``k`` in its
   federated validation (0.5 for a structure never scored, 1 for a decoder never
   validated).
2. A foreground proposal ``k`` of ``d`` stands unless a decoder ``e`` at home that also
   knows ``k`` says something else (background, or a structure that does not lie inside
   ``k``) and knows ``k`` clearly better here: ``f_e * q_e(k) > m * f_d * q_d(k)``, ``m``
   the :data:`VETO_MARGIN`. Where two decoders disagree about ``k``, the one that learnt
   it better, nearer its sites' CTs, decides; neither side's softmax or confidence head
   takes part, as a decoder that misses an organ misses it with a confident background
   (measured on the ``default`` demo's bf16 draw: the tumour task's decoder said
   background at 0.95 over left kidneys that the whole-body decoder found, and vetoed them
   while vetoes weighed ``p * c``). A decoder outside its domain neither proposes nor
   objects, except that it may still propose a structure where another decoder that
   labels it is at home for it and learnt it less: the structure belongs there, and the
   better decoder says so. A structure that one decoder alone knows is never vetoed; it
   can only lose the voxel to another structure.

   Skills measured on different CTs differ by which CTs as much as by which decoder, so a
   later task's sites also score the earlier decoders on their own validation CTs (a peer
   skill, ``server.peers``). Where the scorer is at home and an earlier decoder scored
   higher on ``k`` there than the scorer itself, the earlier decoder's word on ``k`` wins
   over the scorer's, whatever the distances (measured on ``overlap_heavy``: the tumour
   task's decoder 0.754 on its CTs, the trunk decoder 0.739 on the trunk's but 0.801 on
   the tumour task's, and 0.809 against 0.762 on its test CTs). A lower peer skill
   changes nothing: a scorer whose CTs reach beyond the earlier decoder's domain scores it
   where the merge would silence it anyway (the whole-body decoder's sites scored the
   thoracic decoder's aorta 0.22, which on thoracic CTs beat the whole-body decoder's).
3. Among the standing proposals the most trusted wins, each trust
   ``t_d = f_d * p_d * c_d * q_d(l_d)`` (``p_d`` the softmax probability of its arg-max,
   ``c_d`` the sigmoid of its confidence head once calibrated, else 1; on the ``default``
   scenario their product beat each alone) times the least of ``q_d(l_e)`` over the other
   standing proposals ``l_e`` that ``d`` knows: to claim ``l_d`` is to deny ``l_e``, and a
   decoder that never learnt ``l_e`` labels its voxels as a neighbour's (measured on
   ``default`` at the demo's budget: the whole-body decoder, aorta Dice 0, took the
   thoracic decoder's aorta for heart and lung, 0.665 merged against 0.723 alone; with the
   term 0.723). If a standing proposal lies inside the winner's structure (a tumour in its
   organ, by the vocabulary's containment), the most trusted such proposal takes its
   place. Nothing stands: background. The anomaly head, where ``anomaly_weight`` is set,
   scales ``t_d`` of a decoder that knows no lesion by ``1 - w_a * a_d``.

Decoders are visited in task-name order, so ties (and the result) do not depend on the
order of the decoders. Two simpler rules serve as baselines: ``highest_probability``
(the highest arg-max softmax probability among foreground proposals wins) and
``last_decoder`` (the latest decoder that says foreground wins).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence

import torch

from core import anatomy
from core.merge import DecoderVote, MergeSettings, output_ids

VETO_MARGIN = 1.25
"""How much more a denier's weighed skill must be than the claimant's to veto a claim.

A skill is the mean Dice of a few validation CTs, noisy by a few hundredths; where two
decoders' weighed skills are this close, both may be right and the claim stands. Measured
on the fourteen runs of the family and the demos and on the ``default`` plateau run
(2026-12-07): against 1 (no margin) the bf16 demo's tumour task 0.98x -> 1.00x, the plateau
run's merged mean 0.655 -> 0.656, nothing lower by more than 0.002.
"""


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
        return highest_probability(votes, structures)
    if settings.rule == "last_decoder":
        return last_decoder(votes, structures)
    return confidence(votes, structures, settings)


def highest_probability(votes: Sequence[DecoderVote], structures: Sequence[str]) -> torch.Tensor:
    """The foreground proposal of the highest arg-max probability wins (a baseline)."""
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


def last_decoder(votes: Sequence[DecoderVote], structures: Sequence[str]) -> torch.Tensor:
    """The latest decoder that says foreground wins (a baseline)."""
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


def confidence(
    votes: Sequence[DecoderVote], structures: Sequence[str], settings: MergeSettings
) -> torch.Tensor:
    """The anomaly-aware confidence merge: vetoes, the contest, then containment."""
    ordered = sorted(votes, key=lambda v: v.task)
    scales = [v.domain_scale for v in ordered if v.domain is not None]
    unit = statistics.median(scales) if scales else 1.0
    labels, homes, claims, trusts, gates, knows, skills, peers = ([] for _ in range(8))
    rows: list[torch.Tensor] = []
    domains: list[torch.Tensor | None] = []
    for vote in ordered:
        label, prob = vote.proposal(structures)
        labels.append(label)
        device = label.device
        skills.append(vote.skill_table(structures, device))
        peers.append(vote.peer_tables(structures, device))
        score = vote.domain_score() if settings.gating else None
        home = torch.ones((), device=device)  # no domain: at home everywhere
        if score is not None:
            home = torch.exp(-settings.domain_weight * score * vote.domain_scale / unit)
        homes.append(home)
        claims.append(home * skills[-1][label])  # what a veto weighs
        trusts.append(vote.trust(prob, settings.anomaly_weight) * skills[-1][label])
        everywhere = torch.ones_like(label, dtype=torch.bool)
        gates.append(everywhere if score is None else score <= settings.domain_factor)
        row = torch.zeros(len(structures) + 1, dtype=torch.long, device=device)
        row[list(output_ids(vote.structures, tuple(structures)))] = torch.arange(
            1, len(vote.structures) + 1, device=device
        )
        rows.append(row)  # output label -> the vote's own label, its domain's row (0: unknown)
        knows.append(row > 0)
        domains.append(None if vote.domain is None else vote.domain.to(device))
    within = _containment(structures, labels[0].device)
    # (scorer, scored): per label, how much better the scored decoder did on the scorer's
    # own validation CTs than the scorer itself (peer skills; a label not scored, -1 in
    # the peer table, comes out below 0)
    leads = {
        (e, d): peers[e][vote.task] - skills[e]
        for e in range(len(ordered))
        for d, vote in enumerate(ordered)
        if e != d and vote.task in peers[e]
    }
    standing = []
    for d, label in enumerate(labels):
        speaks = gates[d]
        if settings.gating:
            speaks = speaks | _borrowed(d, labels, rows, domains, skills, settings.domain_factor)
        ok = speaks & (label > 0)
        for e, other in enumerate(labels):
            if e != d:
                disagrees = knows[e][label] & (other != label) & ~within[other, label]
                veto = homes[e] * skills[e][label] > VETO_MARGIN * claims[d]
                for scorer, scored in ((e, d), (d, e)):
                    lead = leads.get((scorer, scored))
                    if lead is not None:  # the scored one did better on the scorer's own CTs
                        veto = torch.where(gates[scorer] & (lead[label] > 0), scorer == d, veto)
                ok = ok & ~(gates[e] & disagrees & veto)
        standing.append(ok)
    contest = [
        trust
        * _home_in_contest(d, labels[d], homes, gates, leads)
        * _doubt(d, standing, labels, knows, skills, within)
        for d, trust in enumerate(trusts)
    ]
    best = _most_trusted(standing, labels, contest)
    for _ in structures:  # a containment chain is at most this long
        inside = [ok & within[label, best] for ok, label in zip(standing, labels, strict=True)]
        refined = _most_trusted(inside, labels, contest)
        if torch.equal(refined, best):
            break
        best = torch.where(refined > 0, refined, best)
    return best


def _home_in_contest(
    d: int,
    label: torch.Tensor,
    homes: Sequence[torch.Tensor],
    gates: Sequence[torch.Tensor],
    leads: dict[tuple[int, int], torch.Tensor],
) -> torch.Tensor:
    """``f_d`` in the contest, or a scorer's where its sites saw ``d`` do better on ``l_d``.

    Where a decoder ``e`` at home scored ``d`` higher on ``l_d`` than itself on its own
    CTs (a peer skill), ``d``'s claim was measured on CTs like these and counts as at home
    as ``e`` is (measured on a new fp32 draw of ``reversed_default``: the tumour task's
    right kidney on whole-body CTs, 0.29 alone, lost to the whole-body decoder's liver,
    which never learnt the kidney, for being far from its sites' abdomens: 0.22 merged).
    """
    home = homes[d]
    for (e, scored), lead in leads.items():
        if scored == d:
            home = torch.where(gates[e] & (lead[label] > 0), torch.maximum(home, homes[e]), home)
    return home


def _borrowed(
    d: int,
    labels: Sequence[torch.Tensor],
    rows: Sequence[torch.Tensor],
    domains: Sequence[torch.Tensor | None],
    skills: Sequence[torch.Tensor],
    domain_factor: float,
) -> torch.Tensor:
    """Where decoder ``d`` may claim ``l_d`` outside its own domain: inside another's.

    Where another decoder ``e`` labels ``l_d``, its sites saw ``l_d`` in slabs like these
    (its row of ``l_d`` within the gate), and it learnt ``l_d`` less than ``d`` did
    (``q_e(l_d) < q_d(l_d)``), the structure belongs here and the decoder that knows it
    better may say so. A structure no decoder at home labels (a brain in an abdomen)
    stays gated. ``rows[e]`` maps an output label to ``e``'s own (0: unknown to ``e``).
    """
    label = labels[d]
    slices = torch.arange(label.shape[-1], device=label.device)
    out = torch.zeros_like(label, dtype=torch.bool)
    for e, domain in enumerate(domains):
        if e == d or domain is None:
            continue
        row = rows[e][label.long()]
        at_home = domain[row, slices] <= domain_factor
        out |= (row > 0) & at_home & (skills[e][label] < skills[d][label])
    return out


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
