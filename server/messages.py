"""Building a round's messages and counting what crosses the wire, per site.

A trainable encoder (``base``) travels every round in fp16; the frozen encoder travels
once per site in fp32 (so its sha256 survives), to sites that have not cached it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from core.model import Encoder
from core.payload import state_to_record
from core.protocol import CONFIG, ENCODER, SETTINGS, RoundConfig
from server.federation import SiteInfo


def round_messages(
    cfg: RoundConfig,
    settings: ConfigRecord,
    records: Mapping[str, ArrayRecord],
    sites: tuple[SiteInfo, ...],
    encoder: Encoder,
) -> dict[int, RecordDict]:
    """One message per site: the round config, the phase settings, ``records``, the encoder."""
    out: dict[int, RecordDict] = {}
    sha, sent = cfg.encoder_sha256, None
    for site in sites:
        content = RecordDict({CONFIG: cfg.to_record(), SETTINGS: settings, **records})
        if not sha or sha not in site.encoders:
            sent = sent or state_to_record(encoder.state_dict(), fp16=not sha)
            content[ENCODER] = sent
        out[site.node_id] = content
    return out


def array_bytes(content: RecordDict) -> int:
    """Bytes of the weights in a message."""
    return sum(r.count_bytes() for r in content.array_records.values())


@dataclass
class Ledger:
    """Bytes sent to and received from each site, and rejected replies, over a task."""

    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    """A private task's epsilon per site: the largest each reported (a site counts it over
    the task's phases, so its last report is its total)."""

    def sent(self, site: str, size: int) -> None:
        """Count a message to ``site``."""
        self.bytes_down[site] = self.bytes_down.get(site, 0) + size

    def received(self, sizes: Mapping[str, int], rejected: Mapping[str, str]) -> None:
        """Count accepted replies' bytes and note rejections."""
        for site, size in sizes.items():
            self.bytes_up[site] = self.bytes_up.get(site, 0) + size
        self.rejected.update(rejected)

    def spent(self, epsilon: Mapping[str, float]) -> None:
        """Note what each replying site says it has spent on the task (0: no DP)."""
        for site, value in epsilon.items():
            if value:
                self.epsilon[site] = max(self.epsilon.get(site, 0.0), value)

    def to_json(self) -> dict[str, dict[str, int] | dict[str, str] | dict[str, float]]:
        """For the journal (cumulative over the task's phases so far)."""
        return {
            "bytes_up": dict(self.bytes_up),
            "bytes_down": dict(self.bytes_down),
            "rejected": dict(self.rejected),
            "epsilon": dict(self.epsilon),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, object]]) -> Ledger:
        """From a journal entry made by :meth:`to_json`."""
        return cls(
            {k: int(str(v)) for k, v in data.get("bytes_up", {}).items()},
            {k: int(str(v)) for k, v in data.get("bytes_down", {}).items()},
            {k: str(v) for k, v in data.get("rejected", {}).items()},
            {k: float(str(v)) for k, v in data.get("epsilon", {}).items()},
        )
