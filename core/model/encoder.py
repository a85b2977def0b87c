"""The shared 3D U-Net encoder: trained on the first task, then frozen for good."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from core.model.blocks import conv, init_he

MAX_LEVELS = 7  # 2**6 = 64x downsampling is already deeper than nnU-Net's 3d_fullres
MAX_WIDTH = 1024  # nnU-Net caps at 320; anything far above cannot be trained anywhere


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder widths per resolution level (the first at full resolution) and input channels.

    Each level after the first halves the resolution, so patch sides must be multiples
    of ``2 ** (len(widths) - 1)``.
    """

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    in_channels: int = 1

    def __post_init__(self) -> None:
        if (
            not 2 <= len(self.widths) <= MAX_LEVELS
            or any(not 1 <= w <= MAX_WIDTH for w in self.widths)
            or not 1 <= self.in_channels <= 16
        ):
            raise ValueError(
                f"encoder config: widths {self.widths[:10]}, in {self.in_channels}: expected "
                f"2..{MAX_LEVELS} levels of 1..{MAX_WIDTH} channels and 1..16 input channels"
            )

    @classmethod
    def cpu_default(cls) -> EncoderConfig:
        """Small and fast on a laptop CPU: 8-16-32-64-128."""
        return cls()

    @classmethod
    def gpu_default(cls) -> EncoderConfig:
        """nnU-Net's 3d_fullres widths: 32-64-128-256-320-320."""
        return cls((32, 64, 128, 256, 320, 320))

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this."""
        return int(2 ** (len(self.widths) - 1))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"widths": list(self.widths), "in_channels": self.in_channels}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EncoderConfig:
        """Rebuild from :meth:`to_json`."""
        return cls(tuple(int(w) for w in obj["widths"]), int(obj.get("in_channels", 1)))


def state_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Weights as safetensors bytes (CPU, contiguous, fp32 floats): never a pickle."""
    cpu = {k: v.detach().to("cpu") for k, v in state.items()}
    return save(
        {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in cpu.items()}
    )


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A stable hash of weights: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class Encoder(nn.Module):
    """Two convolutions per level; levels after the first downsample by a strided one."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        w = self.config.widths
        self.levels = nn.ModuleList(
            [nn.Sequential(conv(self.config.in_channels, w[0]), conv(w[0], w[0]))]
            + [
                nn.Sequential(conv(w[i - 1], w[i], stride=2), conv(w[i], w[i]))
                for i in range(1, len(w))
            ]
        )
        self._frozen = False
        init_he(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skip features, from full resolution down to the bottleneck."""
        features: list[torch.Tensor] = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` was called."""
        return self._frozen

    def freeze(self) -> Encoder:
        """Stop all learning for good: no gradients, evaluation-mode normalisation."""
        self._frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        """Switch mode, except that a frozen encoder always stays in evaluation mode."""
        return super().train(mode and not self._frozen)

    def weights_sha256(self) -> str:
        """The stable hash that names this encoder in catalogs, bundles and payloads."""
        return state_sha256(self.state_dict())
