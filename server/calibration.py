"""The ``calibrate`` phase: federated training of the decoder's confidence and anomaly heads.

The server sends the decoder (after distillation: the student); each site trains only its
calibration head (``core.calibration``) and returns that head and the body-part range of
its cases. The heads are averaged (FedAvg) and the ranges joined; the decoder keeps every
other weight as it was, so its organ prediction does not move.
"""

from __future__ import annotations

import logging
from typing import Any

from core.bodypart import BodyRange
from core.merge import Calibration
from core.payload import state_to_record
from core.protocol import DECODER, HEADS
from server.phases import PhaseStep, TaskJob

log = logging.getLogger(__name__)

HEAD_PREFIX = "calibration_head."


def site_range(site: str, metrics: dict[str, float]) -> BodyRange | None:
    """The body-part range a site reported (``None`` if it had no landmark or sent junk)."""
    if "body-lo" not in metrics or "body-hi" not in metrics:
        return None
    try:
        return BodyRange(metrics["body-lo"], metrics["body-hi"])
    except ValueError as e:
        log.warning("%s: ignored its body-part range: %s", site, e)
        return None


class Calibrate(PhaseStep):
    """Train the calibration heads over rounds; record the body-part range."""

    name = "calibrate"

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Run the rounds, keep the averaged heads and the joined range."""
        task = job.task
        heads = {k: v for k, v in job.decoder.state_dict().items() if k.startswith(HEAD_PREFIX)}
        losses, covered = [], None
        for rnd in range(1, task.calibrate_rounds + 1):
            records = {DECODER: state_to_record(job.decoder.state_dict())}
            avg = job.federated_round(
                self.name,
                rnd,
                task.calibrate_rounds,
                task.calibrate_steps,
                records,
                {HEADS: heads},
                job.decoder.genotype,
            )
            heads = avg.states[HEADS]
            job.decoder.load_state_dict({**job.decoder.state_dict(), **heads})
            losses.append(avg.loss)
            for site, metrics in avg.site_metrics.items():
                found = site_range(site, metrics)
                covered = found.union(covered) if found else covered
        job.calibration = Calibration(True, covered)
        meta = {"losses": losses, "calibration": job.calibration.to_json()}
        job.catalog.save_checkpoint(task.name, self.name, heads, meta)
        log.info("%s: calibrated, body-part range %s", task.name, covered)
        return meta

    def restore(self, job: TaskJob) -> None:
        """Reload the averaged heads and the range."""
        heads, meta = job.catalog.load_checkpoint(job.task.name, self.name)
        job.decoder.load_state_dict({**job.decoder.state_dict(), **heads})
        job.calibration = Calibration.from_json(meta["calibration"])
