"""The ``calibrate`` phase: federated training of the decoder's confidence and anomaly heads.

The server sends the decoder (after distillation: the student); each site trains only its
calibration head (``core.local.calibration``) and returns that head and its domain: per row
(the decoder's background, then each structure) the centroids of the slab histograms of
its CTs where it saw that row, and a held-out threshold (``core.domain``). The heads are
averaged (FedAvg); the server joins the last round's domains row by row (median
thresholds: one site cannot widen a domain alone) and stores them in the decoder's
buffers. The decoder keeps every other weight as it was, so its organ prediction does
not move.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import RecordDict

from core.domain import SiteDomain, join_domains
from core.local.calibration import calibrate_phase
from core.merge import Calibration
from core.model.decoder import DOMAIN_BUFFERS
from core.payload import state_to_record
from core.phases.spec import (
    TRAIN,
    PhaseSettings,
    PhaseSpec,
    RoundPrivacy,
    ServerSteps,
    SiteResources,
    TaskState,
    load_model,
    reply,
    tail_mean,
    training_cases,
)
from core.protocol import DECODER, DOMAIN, HEADS, RoundConfig, SiteReply
from core.records import setting

log = logging.getLogger(__name__)

HEAD_PREFIX = "calibration_head."
CENTROIDS, THRESHOLDS = "centroids", "thresholds"  # the arrays of a DOMAIN record


@dataclass(frozen=True)
class CalibrateSettings(PhaseSettings):
    """Calibration rounds and steps."""

    rounds: int = setting(
        1,
        lo=1,
        hi=1000,
        key="calibrate_rounds",
        doc="rounds of training the confidence and anomaly heads",
    )
    steps: int = setting(
        50,
        lo=1,
        hi=100_000,
        key="calibrate_steps",
        fallback="local_steps",
        doc="local steps per calibration round",
    )


@dataclass(frozen=True)
class CalibrateReply(SiteReply):
    """A site's calibration round: both losses."""

    confidence_loss: float = setting(0.0, lo=0.0, hi=1e6)
    anomaly_loss: float = setting(0.0, lo=0.0, hi=1e6)


class Calibrate(PhaseSpec[CalibrateSettings, CalibrateReply]):
    """Train the calibration heads over rounds; fit the decoder's domain."""

    name = "calibrate"
    message_type = f"{TRAIN}.calibrate"
    settings_type = CalibrateSettings
    reply_type = CalibrateReply
    kept_apart = frozenset({DOMAIN})

    def at_site(
        self,
        site: SiteResources,
        cfg: RoundConfig,
        settings: CalibrateSettings,
        content: RecordDict,
    ) -> RecordDict:
        """Train the head one round; reply it and the site's domain.

        A private task's site sends an empty domain (every threshold 0: no row), which
        leaves the decoder without one (it then speaks everywhere in the merge).

        Raises:
            ValueError: if the training CTs hold too little body to describe a domain.
        """
        dataset, train = training_cases(site, cfg)
        model = load_model(site, cfg, content)
        privacy = RoundPrivacy(site, cfg)
        result = calibrate_phase(
            model,
            cfg.task,
            dataset.labels,
            train,
            cfg.preprocessing,
            cfg.train_settings(settings.steps),
            privacy.settings,
            privacy.account,
        )
        domain = result.domain or SiteDomain.empty(len(cfg.structures))
        if result.domain is None and privacy.settings is None:
            raise ValueError(f"{cfg.task}: the training CTs hold too little body (nearly all air)")
        heads = model.decoder(cfg.task).calibration_head.state_dict()
        metrics = CalibrateReply(
            len(train),
            privacy.public(tail_mean(result.losses, last=5)),
            result.seconds,
            privacy.epsilon,
            privacy.public(tail_mean(result.confidence_losses, last=5)),
            privacy.public(tail_mean(result.anomaly_losses, last=5)),
        )
        arrays = {
            HEADS: state_to_record({HEAD_PREFIX + k: v for k, v in heads.items()}),
            DOMAIN: state_to_record(
                {CENTROIDS: domain.centroids, THRESHOLDS: domain.thresholds}, fp16=False
            ),
        }
        return reply(cfg, metrics, arrays)

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Run the rounds, keep the averaged heads and the domain of the last round."""
        settings = steps.settings(self)
        heads = {k: v for k, v in state.decoder.state_dict().items() if k.startswith(HEAD_PREFIX)}
        empty = SiteDomain.empty(len(state.decoder.structures))
        domain = {CENTROIDS: empty.centroids, THRESHOLDS: empty.thresholds}
        losses: list[float | None] = []
        for rnd in range(1, settings.rounds + 1):
            records = {DECODER: state_to_record(state.decoder.state_dict())}
            templates = {HEADS: heads, DOMAIN: domain}
            result = steps.federated_round(
                self, state, rnd, settings.rounds, records, templates, state.decoder.genotype
            )
            heads = dict(result.states[HEADS])
            losses.append(result.loss)
            sites = result.apart[DOMAIN].values()
            kept = {**heads, **domain_buffers(sites)}
            state = state.with_decoder_state(kept)
        calibration = Calibration(True)
        meta = {"losses": losses, "calibration": calibration.to_json()}
        steps.save_checkpoint(self.name, kept, meta)
        log.info("calibrated; domain fitted on %s", sorted(result.replies))
        return dataclasses.replace(state, calibration=calibration), meta

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """Reload the averaged heads and the domain."""
        heads, meta = steps.load_checkpoint(self.name)
        state = state.with_decoder_state(heads)
        return dataclasses.replace(state, calibration=Calibration.from_json(meta["calibration"]))


def domain_buffers(sites: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The decoder's domain buffers from the sites' DOMAIN records (``core.domain``)."""
    domains = [SiteDomain(s[CENTROIDS], s[THRESHOLDS]) for s in sites]
    return dict(zip(DOMAIN_BUFFERS, join_domains(domains), strict=True))
