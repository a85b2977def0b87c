"""The unified continual model: one frozen encoder and an ordered set of task decoders."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from core.model.decoder import Decoder, DecoderOutput
from core.model.encoder import Encoder

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_task_name(task: str) -> str:
    """Task names become file names and module keys: lower-case letters, digits, ``_``, ``-``.

    Raises:
        ValueError: for any other name.
    """
    if not TASK_NAME.match(task):
        raise ValueError(
            f"task name {task!r}: use 1-64 lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return task


class ContinualSegmenter(nn.Module):
    """Encoder + decoders: the encoder runs once per input, every decoder on its features.

    Decoders never share weights, so adding or training one cannot change another's output.
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoders = nn.ModuleDict()

    @property
    def tasks(self) -> list[str]:
        """Task names in the order their decoders were added."""
        return list(self.decoders.keys())

    def decoder(self, task: str) -> Decoder:
        """The decoder of a task."""
        module = self.decoders[task]
        assert isinstance(module, Decoder)
        return module

    def items(self) -> Iterator[tuple[str, Decoder]]:
        """(task, decoder) pairs in order."""
        for task in self.tasks:
            yield task, self.decoder(task)

    def add_decoder(self, task: str, decoder: Decoder) -> Decoder:
        """Append a task's decoder.

        Raises:
            ValueError: for a bad or taken task name, or a decoder built for other widths.
        """
        check_task_name(task)
        if task in self.decoders:
            raise ValueError(f"task {task!r} already has a decoder")
        if decoder.encoder_widths != self.encoder.config.widths:
            raise ValueError(
                f"decoder for {task!r} expects encoder widths {decoder.encoder_widths}, "
                f"this encoder has {self.encoder.config.widths}"
            )
        self.decoders[task] = decoder
        return decoder

    def forward(self, x: torch.Tensor) -> dict[str, DecoderOutput]:
        """Every task's outputs for a batch of preprocessed patches."""
        features = self.encoder(x)
        return {task: decoder(features) for task, decoder in self.items()}

    def organ_logits(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """One task's organ logits alone (:meth:`Decoder.organ_logits`)."""
        return self.decoder(task).organ_logits(self.encoder(x))

    def forward_task(self, x: torch.Tensor, task: str) -> DecoderOutput:
        """One task's outputs (the encoder still runs once)."""
        output: DecoderOutput = self.decoder(task)(self.encoder(x))
        return output
