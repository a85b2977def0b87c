"""The network: shared encoder, genotype-built decoders, the unified continual model."""

from core.model.decoder import Decoder, DecoderOutput
from core.model.encoder import Encoder, EncoderConfig, state_bytes, state_sha256
from core.model.genotype import Genotype, Stage
from core.model.unified import ContinualSegmenter, check_task_name

__all__ = [
    "ContinualSegmenter",
    "Decoder",
    "DecoderOutput",
    "Encoder",
    "EncoderConfig",
    "Genotype",
    "Stage",
    "check_task_name",
    "state_bytes",
    "state_sha256",
]
