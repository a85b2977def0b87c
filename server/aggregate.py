"""Averaging of a round's replies (decoder weights; in `base` the encoder's too), once checked.

A bad reply (an error, malformed metrics, a case count its description does not imply,
NaN, a wrong shape or dtype, the wrong encoder, too large) is rejected with a logged
reason; the round goes on with the others as long as the task's minimum number of sites
remains. Weights are the sites' described training-split sizes, capped; the plan's
``aggregation`` picks the bounded mean (``clipped``, the default), the robust rule
(``robust``; both ``server.robust``) or plain FedAvg (``fedavg``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from core.payload import PayloadError, record_to_state
from core.phases.spec import PhaseSpec, RoundResult
from core.protocol import CONFIG, ENCODER_SHA, METRICS, RoundConfig, SiteReply
from core.records import RecordError
from server.federation import Reply
from server.messages import array_bytes
from server.plan import AggregationSettings
from server.robust import robust_mean, weighted_mean

log = logging.getLogger(__name__)


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


def aggregate(
    replies: list[Reply],
    phase: PhaseSpec[Any, Any],
    cfg: RoundConfig,
    templates: Mapping[str, Mapping[str, torch.Tensor]],
    described: Mapping[str, int],
    rule: AggregationSettings,
    min_sites: int,
    max_bytes: int,
) -> RoundResult[Any]:
    """Check every reply, then average the accepted ones.

    Args:
        replies: the round's replies (or why a site has none).
        phase: the phase, which parses the reply's metrics.
        cfg: what the sites were told.
        templates: per record key, the state the server sent (names, shapes, reference).
        described: per site, the case count it gave in ``describe``.
        rule: the plan's aggregation settings.
        min_sites: the fewest usable replies the round needs.
        max_bytes: the largest payload accepted.

    Raises:
        RoundFailed: if fewer than ``min_sites`` replies pass the checks.
    """
    accepted: list[tuple[Reply, dict[str, dict[str, torch.Tensor]], SiteReply]] = []
    rejected: dict[str, str] = {}
    for reply in replies:
        try:
            states, metrics = check_reply(reply, phase, cfg, templates, max_bytes)
            expected = phase.expected_examples(described.get(reply.site.name, 0), cfg.val_fraction)
            if metrics.examples != expected:
                raise PayloadError(
                    f"{reply.site.name}: reports {metrics.examples} cases; its description "
                    f"implies {expected}"
                )
        except PayloadError as e:
            rejected[reply.site.name] = str(e)
            log.warning("rejected %s", e)
            continue
        accepted.append((reply, states, metrics))
    if len(accepted) < min_sites:
        raise RoundFailed(f"{len(accepted)} usable site(s), the task needs {min_sites}: {rejected}")
    weights = [float(min(m.examples, rule.max_site_cases)) for _, _, m in accepted]
    averaged = {}
    clipped: dict[str, float] = {}
    for key, reference in templates.items():
        if key in phase.kept_apart:
            continue
        sites = [(states[key], w) for (_, states, _), w in zip(accepted, weights, strict=True)]
        if rule.aggregation == "fedavg":
            averaged[key] = weighted_mean(sites)
        else:
            trim = rule.aggregation == "robust"
            mean = robust_mean(sites, reference, rule.norm_bound, rule.trim_fraction, trim)
            for (reply, _, _), scale in zip(accepted, mean.scales, strict=True):
                if scale < 1.0:
                    name = reply.site.name
                    clipped[name] = round(min(scale, clipped.get(name, 1.0)), 6)
            if any(scale < 1.0 for scale in mean.scales):
                log.warning("%s: updates clipped to norm %.3g: %s", key, mean.bound, mean.scales)
            averaged[key] = mean.state
    return RoundResult(
        averaged,
        {r.site.name: metrics for r, _, metrics in accepted},
        rejected,
        {r.site.name: array_bytes(r.content) for r, _, _ in accepted if r.content},
        {
            key: {r.site.name: states[key] for r, states, _ in accepted}
            for key in phase.kept_apart & set(templates)
        },
        clipped,
    )
