"""The ``calibrate`` phase: federated training of the decoder's confidence and anomaly heads.

The server sends the decoder (after distillation: the student); each site trains only its
calibration head (``core.calibration``) and returns that head and the body-part range of
its cases. The heads are averaged (FedAvg) and the ranges joined; the decoder keeps every
other weight as it was, so its organ prediction does not move.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import RecordDict

from core.bodypart import BodyRange
from core.calibration import calibrate_phase
from core.merge import Calibration
from core.payload import state_to_record
from core.phases.spec import (
    TRAIN,
    PhaseSpec,
    ServerSteps,
    SiteResources,
    TaskState,
    load_model,
    reply,
    tail_mean,
    training_cases,
)
from core.protocol import DECODER, HEADS, RoundConfig, SiteReply
from core.records import Record, setting

log = logging.getLogger(__name__)

HEAD_PREFIX = "calibration_head."
BODY_MM = 3000.0  # the body-part scale spans well within +-3 m of L5/S1


@dataclass(frozen=True)
class CalibrateSettings(Record):
    """Calibration rounds and steps."""

    rounds: int = setting(1, lo=1, hi=1000, key="calibrate_rounds")
    steps: int = setting(50, lo=1, hi=100_000, key="calibrate_steps", fallback="local_steps")


@dataclass(frozen=True)
class CalibrateReply(SiteReply):
    """A site's calibration round: both losses and its cases' body-part range (mm)."""

    confidence_loss: float = setting(0.0, lo=0.0, hi=1e6)
    anomaly_loss: float = setting(0.0, lo=0.0, hi=1e6)
    body_lo: float | None = setting(None, lo=-BODY_MM, hi=BODY_MM)
    body_hi: float | None = setting(None, lo=-BODY_MM, hi=BODY_MM)

    def body_range(self) -> BodyRange | None:
        """The range, if the site found landmarks and sent a consistent one."""
        if self.body_lo is None or self.body_hi is None:
            return None
        try:
            return BodyRange(self.body_lo, self.body_hi)
        except ValueError as e:
            log.warning("ignored a body-part range: %s", e)
            return None


class Calibrate(PhaseSpec[CalibrateSettings, CalibrateReply]):
    """Train the calibration heads over rounds; record the body-part range."""

    name = "calibrate"
    message_type = f"{TRAIN}.calibrate"
    settings_type = CalibrateSettings
    reply_type = CalibrateReply

    def at_site(
        self,
        site: SiteResources,
        cfg: RoundConfig,
        settings: CalibrateSettings,
        content: RecordDict,
    ) -> RecordDict:
        """Train the head one round; reply it and the cases' body-part range."""
        dataset, train = training_cases(site, cfg)
        model = load_model(site, cfg, content)
        result = calibrate_phase(
            model,
            cfg.task,
            dataset.labels,
            train,
            cfg.preprocessing,
            cfg.train_settings(settings.steps),
        )
        heads = model.decoder(cfg.task).calibration_head.state_dict()
        covered = result.body_range
        metrics = CalibrateReply(
            len(train),
            tail_mean(result.losses, last=5),
            result.seconds,
            tail_mean(result.confidence_losses, last=5),
            tail_mean(result.anomaly_losses, last=5),
            covered.lo if covered else None,
            covered.hi if covered else None,
        )
        arrays = {HEADS: state_to_record({HEAD_PREFIX + k: v for k, v in heads.items()})}
        return reply(cfg, metrics, arrays)

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Run the rounds, keep the averaged heads and the joined range."""
        settings = steps.settings(self)
        heads = {k: v for k, v in state.decoder.state_dict().items() if k.startswith(HEAD_PREFIX)}
        losses, covered = [], None
        for rnd in range(1, settings.rounds + 1):
            records = {DECODER: state_to_record(state.decoder.state_dict())}
            result = steps.federated_round(
                self, state, rnd, settings.rounds, records, {HEADS: heads}, state.decoder.genotype
            )
            heads = dict(result.states[HEADS])
            state = state.with_decoder_state(heads)
            losses.append(result.loss)
            for site_reply in result.replies.values():
                found = site_reply.body_range()
                covered = found.union(covered) if found else covered
        calibration = Calibration(True, covered)
        meta = {"losses": losses, "calibration": calibration.to_json()}
        steps.save_checkpoint(self.name, heads, meta)
        log.info("calibrated, body-part range %s", covered)
        return dataclasses.replace(state, calibration=calibration), meta

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """Reload the averaged heads and the range."""
        heads, meta = steps.load_checkpoint(self.name)
        state = state.with_decoder_state(heads)
        return dataclasses.replace(state, calibration=Calibration.from_json(meta["calibration"]))
