"""The ``evaluate`` phase: per-structure scores on every site's validation cases.

Dice, precision, recall and HD95 (``core.scores.METRICS``).

Sites reply sums and counts per structure (never per-case values); the server checks
them against the case count and pools them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import MetricRecord, RecordDict

from core.data import split_cases, validation_count
from core.local.evaluation import evaluate_task
from core.payload import state_to_record
from core.phases.spec import (
    NoSettings,
    PhaseSpec,
    RoundPrivacy,
    ServerSteps,
    SiteResources,
    TaskState,
    load_model,
    reply,
)
from core.protocol import DECODER, RoundConfig, SiteReply
from core.records import RecordError, flat, setting
from core.scores import METRICS, RATIOS, ScoreSums

log = logging.getLogger(__name__)

MAX_HD95_MM = 1e5  # a Hausdorff distance beyond 100 m is no measurement


@dataclass(frozen=True)
class EvaluateReply(SiteReply):
    """Validation cases and the per-structure score sums over them."""

    examples: int = setting(lo=0, hi=1_000_000, doc="validation cases at the site")
    scores: ScoreSums = field(default_factory=ScoreSums, metadata={"record": False})

    def to_record(self) -> MetricRecord:
        """As a Flower MetricRecord: the counts and ``metric-sum/structure`` entries."""
        return MetricRecord({**flat(self, wire=True), **self.scores.to_flat()})


def checked_scores(
    values: Mapping[str, Any], structures: tuple[str, ...], cases: int, where: str
) -> ScoreSums:
    """Score sums from a reply, each bounded by the number of cases.

    Raises:
        RecordError: for a structure not evaluated, a count above the cases, a Dice,
            precision or recall sum outside [0, count] or a non-finite or negative HD95 sum.
    """
    numbers = {k: v for k, v in values.items() if isinstance(v, int | float)}
    scores = ScoreSums.from_flat(numbers)
    for metric in METRICS:
        top = 1.0 if metric in RATIOS else MAX_HD95_MM
        for structure, (total, n) in getattr(scores, metric).items():
            name = f"{where}.{metric}/{structure}"
            if structure not in structures:
                raise RecordError(f"{name}: not one of the task's structures")
            if not (math.isfinite(total) and math.isfinite(n)) or not 0 <= n <= cases:
                raise RecordError(f"{name}: count {n} outside [0, {cases}]")
            if n != int(n) or not 0.0 <= total <= top * n:
                raise RecordError(f"{name}: sum {total} outside [0, {top} x {n}]")
    return scores


class Evaluate(PhaseSpec[NoSettings, EvaluateReply]):
    """Ask each site to score the decoder; pool the sums."""

    name = "evaluate"
    message_type = "evaluate"
    settings_type = NoSettings
    reply_type = EvaluateReply

    def parse_reply(
        self, record: MetricRecord | None, cfg: RoundConfig, where: str
    ) -> EvaluateReply:
        """The counts, and score sums bounded by them (the task's structures only)."""
        base = super().parse_reply(record, cfg, where)
        scores = checked_scores(dict(record or {}), cfg.structures, base.examples, where)
        return dataclasses.replace(base, scores=scores)

    def expected_examples(self, cases: int, val_fraction: float) -> int:
        """A site scores its validation split."""
        return validation_count(cases, val_fraction)

    def at_site(
        self, site: SiteResources, cfg: RoundConfig, settings: NoSettings, content: RecordDict
    ) -> RecordDict:
        """Scores per structure on the site's validation split, as sums only.

        Raises:
            ValueError: for a private task, or at a site that insists on DP: the sums
                would leave without noise.
        """
        if RoundPrivacy(site, cfg).settings is not None:
            raise ValueError(f"{cfg.task}: a private task's validation scores are not sent")
        dataset = site.dataset_for(cfg.labels or cfg.structures, cfg.partial_labels)
        _, val = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
        model = load_model(site, cfg, content)
        labelled = [s for s in cfg.structures if s in dataset.labels.structures]
        scores = evaluate_task(
            model, cfg.task, val, dataset.labels, cfg.preprocessing, cfg.patch, scored=labelled
        )
        return reply(cfg, EvaluateReply(len(val), scores=scores))

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """One round with nothing to average; pool the sums of the accepted replies."""
        records = {DECODER: state_to_record(state.decoder.state_dict())}
        result = steps.federated_round(self, state, 1, 1, records, {}, state.decoder.genotype)
        pooled, cases = ScoreSums(), 0
        for site_reply in result.replies.values():
            pooled.merge(site_reply.scores)
            cases += site_reply.examples
        metrics = {**{m: pooled.means(m) for m in METRICS}, "validation_cases": cases}
        return dataclasses.replace(state, metrics=metrics), {"metrics": metrics}

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """The pooled metrics from the journal."""
        return dataclasses.replace(state, metrics=dict(summary.get("metrics", {})))
