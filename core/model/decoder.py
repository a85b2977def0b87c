"""A task decoder on the shared encoder's features, built from a genotype and a label list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.blocks import UpSample
from torch import nn
from torch.nn import functional as F

from core import anatomy
from core.domain import CENTROID_WIDTH, TASK_CENTROIDS, VIEWS
from core.model.blocks import PointwiseConv3d, init_he, op_block
from core.model.genotype import Genotype


class DecoderOutput(NamedTuple):
    """Per-voxel logits of a decoder.

    Attributes:
        organ: ``(B, 1 + K, ...)``: background then the task's structures.
        anomaly: ``(B, 1, ...)``: how unlike its training data the tissue is.
        confidence: ``(B, 1, ...)``: how likely its own arg-max label is right.
    """

    organ: torch.Tensor
    anomaly: torch.Tensor
    confidence: torch.Tensor


CALIBRATION_WIDTH = 8  # hidden channels of the shared anomaly/confidence head


class Decoder(nn.Module):
    """Upsampling stages, each: transposed conv x2, concat the skip, two genotype operations.

    The organ head is a 1x1x1 convolution of the last stage's features. The anomaly and
    confidence logits come from one small calibration head (3x3x3 convolution of the
    features and the organ softmax, LeakyReLU, 1x1x1 to two channels); it sees the softmax
    detached, so training it never moves the organ prediction.

    Args:
        encoder_widths: the encoder's level widths (full resolution first).
        genotype: the architecture (one stage per upsampling step).
        structures: the task's structures (canonical vocabulary names), in label-id order.
    """

    domain_centroids: torch.Tensor
    domain_thresholds: torch.Tensor

    def __init__(
        self, encoder_widths: Sequence[int], genotype: Genotype, structures: Sequence[str]
    ) -> None:
        super().__init__()
        if not structures:
            raise ValueError("a decoder needs at least one structure")
        for name in structures:
            anatomy.get(name)
        if len(set(structures)) != len(structures):
            raise ValueError(f"structures repeat a name: {list(structures)}")
        self.genotype = genotype
        self.structures = tuple(structures)
        self.encoder_widths = tuple(encoder_widths)
        widths = genotype.widths(encoder_widths)
        skips = list(reversed(encoder_widths[:-1]))
        below = [encoder_widths[-1], *widths[:-1]]
        self.ups = nn.ModuleList(
            UpSample(3, w_in, w, scale_factor=2, mode="deconv")
            for w_in, w in zip(below, widths, strict=True)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(op_block(s.op, w + skip, w), op_block(s.op, w, w))
            for s, w, skip in zip(genotype.stages, widths, skips, strict=True)
        )
        self.organ_head = PointwiseConv3d(widths[-1], 1 + len(structures))
        self.calibration_head = nn.Sequential(
            nn.Conv3d(widths[-1] + 1 + len(structures), CALIBRATION_WIDTH, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv3d(CALIBRATION_WIDTH, 2, kernel_size=1),
        )
        init_he(self)
        # where its sites saw its background and each structure (core.domain), set by the
        # calibrate phase; a threshold of 0: no row (row 0, the background: no domain at
        # all, never silenced)
        rows = 1 + len(self.structures)
        self.register_buffer("domain_centroids", torch.zeros(rows, TASK_CENTROIDS, CENTROID_WIDTH))
        self.register_buffer("domain_thresholds", torch.zeros(rows, len(VIEWS)))
        self.register_load_state_dict_pre_hook(_keep_missing_domain)  # type: ignore[no-untyped-call]

    def forward(self, features: Sequence[torch.Tensor]) -> DecoderOutput:
        """Decode the encoder's skip features (full resolution first, bottleneck last)."""
        x = self.last_features(features)
        organ_last = self.organ_head.channels_last(x)
        organ = organ_last.movedim(-1, 1)
        probs = F.softmax(organ_last.detach(), dim=-1).movedim(-1, 1)
        return DecoderOutput(organ, *self._heads(x, probs))

    def organ_logits(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The organ head alone: what training and scoring need.

        Skips the calibration head, a full-resolution 3x3x3 convolution that costs about
        a third of the decoder's forward pass.
        """
        logits: torch.Tensor = self.organ_head(self.last_features(features))
        return logits

    def last_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last stage's features, which every head reads."""
        x = features[-1]
        for up, stage, skip in zip(self.ups, self.stages, reversed(features[:-1]), strict=True):
            x = stage(torch.cat([up(x), skip], dim=1))
        return x

    @property
    def has_domain(self) -> bool:
        """Whether the calibrate phase fitted its domain."""
        return float(self.domain_thresholds[0, 0]) > 0

    def calibration(
        self, x: torch.Tensor, organ: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly and confidence logits from the last features and the organ logits."""
        return self._heads(x, F.softmax(organ.detach(), dim=1))

    def _heads(self, x: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the first convolution of cat([x, probs]) as the sum of one over each: the same
        # sum without a copy of every structure's probability map
        first, activation, last = self.calibration_head
        assert isinstance(first, nn.Conv3d)
        c = x.shape[1]
        hidden = F.conv3d(x, first.weight[:, :c], first.bias, padding=1)
        hidden = hidden + F.conv3d(probs, first.weight[:, c:], padding=1)
        heads = last(activation(hidden))
        return heads[:, :1], heads[:, 1:]


DOMAIN_BUFFERS = ("domain_centroids", "domain_thresholds")


def _keep_missing_domain(
    module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: object
) -> None:
    """A decoder saved without a domain, or with one of another shape, loads with none.

    Such a decoder is never silenced: weights from before decoders had a domain, or from
    before descriptors held the window's context, speak everywhere until recalibrated.
    """
    own = [getattr(module, name) for name in DOMAIN_BUFFERS]
    saved = [state.get(prefix + name) for name in DOMAIN_BUFFERS]
    if any(s is None or s.shape != o.shape for s, o in zip(saved, own, strict=True)):
        for name, mine in zip(DOMAIN_BUFFERS, own, strict=True):
            state[prefix + name] = torch.zeros_like(mine)
