"""The supernet of the differentiable search of a decoder under a size budget.

The supernet has, per decoder stage, every operation (3d, p3d, 2d) at full width; width
choices are soft channel masks, so narrower students share the first channels. Each stage
carries architecture parameters: ``alpha`` over operations and ``beta`` over widths; the
stage output is the softmax(alpha)-weighted sum of the operations, times the
softmax(beta)-weighted mask. The expected parameter count of the decoder under these
distributions is differentiable, so a cost term can push it under the budget. The derived
genotype takes each stage's most likely choice and then trades the least likely-loss for
the most parameters until it fits the budget (if even the smallest genotype is over the
budget, the smallest is taken). The site's
search loop is :mod:`core.local.search`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from torch import nn

from core import anatomy
from core.model.blocks import OPS, PointwiseConv3d, init_he, op_block
from core.model.cost import genotype_parameters, head_parameters, stage_parameters
from core.model.genotype import WIDTH_CHOICES, Genotype, Stage


def _width(base: int, fraction: float) -> int:
    return max(4, round(base * fraction))  # as Genotype.widths does


class MixedStage(nn.Module):
    """One decoder stage holding every operation at full width."""

    def __init__(self, below: int, width: int, skip: int) -> None:
        super().__init__()
        self.up = UpSample(3, below, width, scale_factor=2, mode="deconv")
        self.ops = nn.ModuleDict(
            {
                op: nn.Sequential(op_block(op, width + skip, width), op_block(op, width, width))
                for op in OPS
            }
        )
        masks = torch.zeros(len(WIDTH_CHOICES), width)
        for i, fraction in enumerate(WIDTH_CHOICES):
            masks[i, : _width(width, fraction)] = 1.0
        self.register_buffer("masks", masks)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, p_op: torch.Tensor, p_width: torch.Tensor
    ) -> torch.Tensor:
        """Mix the operations and the width masks with these probabilities."""
        y = torch.cat([self.up(x), skip], dim=1)
        outputs: list[torch.Tensor] = [self.ops[op](y) for op in OPS]
        out = torch.stack(outputs).mul(p_op.view(-1, 1, 1, 1, 1, 1)).sum(0)
        masks: torch.Tensor = self.masks  # type: ignore[assignment]
        mask = (p_width[:, None] * masks).sum(0)
        return out * mask.view(1, -1, 1, 1, 1)


class SuperNet(nn.Module):
    """The search space of one task's decoder, on the frozen encoder's features."""

    def __init__(self, encoder_widths: Sequence[int], structures: Sequence[str]) -> None:
        super().__init__()
        for name in structures:
            anatomy.get(name)
        self.encoder_widths = tuple(encoder_widths)
        self.structures = tuple(structures)
        skips = list(reversed(encoder_widths[:-1]))
        below = [encoder_widths[-1], *skips[:-1]]
        self.stages = nn.ModuleList(MixedStage(b, w, w) for b, w in zip(below, skips, strict=True))
        self.organ_head = PointwiseConv3d(skips[-1], 1 + len(structures))
        init_he(self)
        n = len(skips)
        self.alpha = nn.Parameter(torch.zeros(n, len(OPS)))
        self.beta = nn.Parameter(torch.zeros(n, len(WIDTH_CHOICES)))
        self._tables = [self._stage_table(i) for i in range(n)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (alpha over operations, beta over widths)."""
        return [self.alpha, self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything else: the supernet's weights."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Organ logits of the mixed decoder."""
        p_op, p_width = torch.softmax(self.alpha, 1), torch.softmax(self.beta, 1)
        x = features[-1]
        for i, (stage, skip) in enumerate(zip(self.stages, reversed(features[:-1]), strict=True)):
            x = stage(x, skip, p_op[i], p_width[i])
        out: torch.Tensor = self.organ_head(x)
        return out

    def _stage_table(self, i: int) -> torch.Tensor:
        """Parameters of stage ``i`` for every (operation, own width, width below)."""
        skips = list(reversed(self.encoder_widths[:-1]))
        base = skips[i]
        below = (
            [self.encoder_widths[-1]]
            if i == 0
            else [_width(skips[i - 1], f) for f in WIDTH_CHOICES]
        )
        table = torch.zeros(len(OPS), len(WIDTH_CHOICES), len(WIDTH_CHOICES))
        for o, op in enumerate(OPS):
            for w, fraction in enumerate(WIDTH_CHOICES):
                for b in range(len(WIDTH_CHOICES)):
                    table[o, w, b] = stage_parameters(
                        op, _width(base, fraction), below[min(b, len(below) - 1)], base
                    )
        return table

    def expected_parameters(self) -> torch.Tensor:
        """Expected decoder parameters under the current distributions (differentiable)."""
        p_op, p_width = torch.softmax(self.alpha, 1), torch.softmax(self.beta, 1)
        total = torch.zeros(())
        for i, table in enumerate(self._tables):
            p_below = p_width[i - 1] if i else torch.tensor([1.0, 0.0, 0.0])
            total = total + torch.einsum(
                "o,w,b,owb->", p_op[i], p_width[i], p_below, table.to(p_op)
            )
        last = list(reversed(self.encoder_widths[:-1]))[-1]
        heads = torch.tensor(
            [head_parameters(_width(last, f), len(self.structures)) for f in WIDTH_CHOICES]
        )
        return total + (p_width[-1] * heads.to(p_width)).sum()

    def derive(self, budget: int) -> Genotype:
        """The most likely genotype that fills, without exceeding, ``budget`` parameters.

        Starts from each stage's most likely operation and width. While over budget, it
        makes the single-stage change that loses the least log-probability per parameter
        saved; then, while a change still fits, the one that loses the least (or gains
        the most) log-probability per parameter added, so the student uses its budget.
        If even the smallest genotype is over budget, returns the smallest.
        """
        logp_op = torch.log_softmax(self.alpha.detach(), 1)
        logp_w = torch.log_softmax(self.beta.detach(), 1)
        n = len(self.stages)
        choice = [(int(logp_op[i].argmax()), int(logp_w[i].argmax())) for i in range(n)]

        def genotype(ch: list[tuple[int, int]]) -> Genotype:
            return Genotype(tuple(Stage(OPS[o], WIDTH_CHOICES[w]) for o, w in ch))

        def size(ch: list[tuple[int, int]]) -> int:
            return genotype_parameters(self.encoder_widths, genotype(ch), len(self.structures))

        def best_change(ch: list[tuple[int, int]], shrink: bool) -> list[tuple[int, int]] | None:
            current, best = size(ch), None
            for i, (o, w) in enumerate(ch):
                for o2 in range(len(OPS)):
                    for w2 in range(len(WIDTH_CHOICES)):
                        trial = [*ch[:i], (o2, w2), *ch[i + 1 :]]
                        delta = current - size(trial) if shrink else size(trial) - current
                        if delta <= 0 or (not shrink and size(trial) > budget):
                            continue
                        loss = float(logp_op[i, o] + logp_w[i, w] - logp_op[i, o2] - logp_w[i, w2])
                        if best is None or loss / delta < best[0]:
                            best = (loss / delta, trial)
            return None if best is None else best[1]

        while size(choice) > budget and (smaller := best_change(choice, shrink=True)):
            choice = smaller
        while size(choice) <= budget and (larger := best_change(choice, shrink=False)):
            choice = larger
        return genotype(choice)
