"""Decoder-only FedAvg weighted by case counts, after every payload has been checked.

A bad reply (an error, NaN, a wrong shape, the wrong encoder, too large) is rejected with
a logged reason; the round goes on with the others as long as the task's minimum number
of sites remains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from core.payload import PayloadError, record_to_state, state_to_record
from core.protocol import CONFIG, ENCODER_SHA, METRICS
from server.federation import Reply

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """Fewer usable replies than the task's minimum number of sites."""


@dataclass
class Averaged:
    """A round's result: averaged states per record key, who counted, who was rejected."""

    states: dict[str, dict[str, torch.Tensor]]
    sites: list[str]
    examples: int
    loss: float | None
    rejected: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def check_reply(
    reply: Reply,
    templates: Mapping[str, Mapping[str, torch.Tensor]],
    encoder_sha: str | None,
    max_bytes: int,
) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The checked states of one reply and its number of examples.

    Raises:
        PayloadError: saying why the reply cannot be used.
    """
    name = reply.site.name
    if reply.content is None:
        raise PayloadError(f"{name}: {reply.error}")
    content = reply.content
    metrics = content.metric_records.get(METRICS)
    examples = metrics.get("num-examples") if metrics else None
    if not isinstance(examples, int) or examples < 1:
        raise PayloadError(f"{name}: num-examples must be a whole number >= 1, got {examples!r}")
    if encoder_sha is not None:
        config = content.config_records.get(CONFIG)
        got = config.get(ENCODER_SHA) if config else None
        if got != encoder_sha:
            raise PayloadError(
                f"{name}: trained on encoder {str(got)[:12]}, expected {encoder_sha[:12]}"
            )
    states = {}
    for key, template in templates.items():
        record = content.array_records.get(key)
        if record is None:
            raise PayloadError(f"{name}: no {key!r} weights in the reply")
        states[key] = record_to_state(record, template, f"{name}: {key}", max_bytes)
    return states, examples


def fedavg(
    replies: list[Reply],
    templates: Mapping[str, Mapping[str, torch.Tensor]],
    encoder_sha: str | None,
    min_sites: int,
    max_bytes: int,
) -> Averaged:
    """Check every reply, then average the accepted ones weighted by their case counts.

    Raises:
        RoundFailed: if fewer than ``min_sites`` replies pass the checks.
    """
    accepted: list[tuple[Reply, dict[str, dict[str, torch.Tensor]], int]] = []
    rejected: dict[str, str] = {}
    for reply in replies:
        try:
            states, examples = check_reply(reply, templates, encoder_sha, max_bytes)
        except PayloadError as e:
            rejected[reply.site.name] = str(e)
            log.warning("rejected %s", e)
            continue
        accepted.append((reply, states, examples))
    if len(accepted) < min_sites:
        raise RoundFailed(f"{len(accepted)} usable site(s), the task needs {min_sites}: {rejected}")
    averaged = {}
    for key in templates:
        records = [
            RecordDict(
                {
                    key: state_to_record(states[key], fp16=False),
                    METRICS: MetricRecord({"num-examples": n}),
                }
            )
            for _, states, n in accepted
        ]
        averaged[key] = dict(aggregate_arrayrecords(records, "num-examples").to_torch_state_dict())
    losses = [
        (r.content.metric_records[METRICS].get("loss"), n) for r, _, n in accepted if r.content
    ]
    weighted = [(float(v), n) for v, n in losses if isinstance(v, int | float)]
    loss = sum(v * n for v, n in weighted) / sum(n for _, n in weighted) if weighted else None
    sizes = {
        r.site.name: sum(rec.count_bytes() for rec in r.content.array_records.values())
        for r, _, _ in accepted
        if r.content
    }
    metrics = {
        r.site.name: {
            k: float(v)
            for k, v in r.content.metric_records[METRICS].items()
            if isinstance(v, int | float)
        }
        for r, _, _ in accepted
        if r.content
    }
    return Averaged(
        averaged,
        [r.site.name for r, _, _ in accepted],
        sum(n for _, _, n in accepted),
        loss,
        rejected,
        sizes,
        metrics,
    )
