"""Decoder-only FedAvg weighted by case counts, after every reply has been checked.

A bad reply (an error, malformed metrics, NaN, a wrong shape, the wrong encoder, too
large) is rejected with a logged reason; the round goes on with the others as long as
the task's minimum number of sites remains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from core.payload import PayloadError, record_to_state, state_to_record
from core.phases.spec import PhaseSpec, RoundResult
from core.protocol import CONFIG, ENCODER_SHA, METRICS, RoundConfig, SiteReply
from core.records import RecordError
from server.federation import Reply
from server.messages import array_bytes

log = logging.getLogger(__name__)

WEIGHT = "weight"


class RoundFailed(RuntimeError):
    """Fewer usable replies than the task's minimum number of sites."""


def check_reply(
    reply: Reply,
    phase: PhaseSpec[Any, Any],
    cfg: RoundConfig,
    templates: Mapping[str, Mapping[str, torch.Tensor]],
    max_bytes: int,
) -> tuple[dict[str, dict[str, torch.Tensor]], SiteReply]:
    """The checked states of one reply and its parsed metrics.

    Raises:
        PayloadError: saying why the reply cannot be used.
    """
    name = reply.site.name
    if reply.content is None:
        raise PayloadError(f"{name}: {reply.error}")
    content = reply.content
    try:
        metrics = phase.parse_reply(content.metric_records.get(METRICS), cfg, f"{name}: metrics")
    except RecordError as e:
        raise PayloadError(str(e)) from None
    if cfg.encoder_sha256:
        config = content.config_records.get(CONFIG)
        got = config.get(ENCODER_SHA) if config else None
        if got != cfg.encoder_sha256:
            raise PayloadError(
                f"{name}: trained on encoder {str(got)[:12]}, expected {cfg.encoder_sha256[:12]}"
            )
    states = {}
    for key, template in templates.items():
        record = content.array_records.get(key)
        if record is None:
            raise PayloadError(f"{name}: no {key!r} weights in the reply")
        states[key] = record_to_state(record, template, f"{name}: {key}", max_bytes)
    return states, metrics


def fedavg(
    replies: list[Reply],
    phase: PhaseSpec[Any, Any],
    cfg: RoundConfig,
    templates: Mapping[str, Mapping[str, torch.Tensor]],
    min_sites: int,
    max_bytes: int,
) -> RoundResult[Any]:
    """Check every reply, then average the accepted ones weighted by their case counts.

    Raises:
        RoundFailed: if fewer than ``min_sites`` replies pass the checks.
    """
    accepted: list[tuple[Reply, dict[str, dict[str, torch.Tensor]], SiteReply]] = []
    rejected: dict[str, str] = {}
    for reply in replies:
        try:
            states, metrics = check_reply(reply, phase, cfg, templates, max_bytes)
        except PayloadError as e:
            rejected[reply.site.name] = str(e)
            log.warning("rejected %s", e)
            continue
        accepted.append((reply, states, metrics))
    if len(accepted) < min_sites:
        raise RoundFailed(f"{len(accepted)} usable site(s), the task needs {min_sites}: {rejected}")
    averaged = {}
    for key in templates:
        records = [
            RecordDict(
                {
                    key: state_to_record(states[key], fp16=False),
                    METRICS: MetricRecord({WEIGHT: metrics.examples}),
                }
            )
            for _, states, metrics in accepted
        ]
        averaged[key] = dict(aggregate_arrayrecords(records, WEIGHT).to_torch_state_dict())
    return RoundResult(
        averaged,
        {r.site.name: metrics for r, _, metrics in accepted},
        rejected,
        {r.site.name: array_bytes(r.content) for r, _, _ in accepted if r.content},
    )
