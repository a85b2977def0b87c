"""Peer skills: a task's sites score the earlier decoders on the structures they share.

A decoder's skill is its validation Dice on its own sites' CTs, so two decoders that label
the same structure were measured on different CTs, and where their skills are close the
CTs rank them as much as the decoders do. After a task's own evaluation, its sites score
every earlier catalog decoder that labels one of the task's structures, on the same
validation CTs, in one ``evaluate`` round each; the merge compares the two decoders on
those CTs where the later one is at home (:mod:`core.merge_rules`).

What leaves a site is what ``evaluate`` sends (Dice, precision and recall sums and HD95
sums per structure); what reaches it is a catalog decoder, which every site receives in
the prediction bundle anyway. A private task is not evaluated, so it scores no peers. A
peer round that fails (too few sites reply) leaves that decoder unscored, and the task
goes on: the merge then ranks the two as it would without peer skills.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from core.payload import state_to_record
from core.phases import EVALUATE
from core.phases.spec import TaskState
from core.protocol import DECODER
from core.scores import ScoreSums
from server.aggregate import RoundFailed
from server.steps import TaskRun

log = logging.getLogger(__name__)

PEERS = "peers"  # the step's name, and its journal summary's key


class PeerSkills:
    """Score the earlier decoders at this task's sites (see the module docstring)."""

    name = PEERS

    def execute(self, run: TaskRun, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """One evaluate round per catalog decoder that shares a structure with the task.

        The catalog's other decoders are the earlier tasks' (and, where a task is trained
        again as a new version, the later ones' too).
        """
        own = set(run.task.structures)
        peers: dict[str, dict[str, float]] = {}
        others = [t["name"] for t in run.catalog.tasks() if t["name"] != run.task.name]
        model = run.catalog.model() if others else None
        for task in others:
            assert model is not None
            decoder = model.decoder(task)
            shared = own & set(decoder.structures)
            if not shared:
                continue
            records = {DECODER: state_to_record(decoder.state_dict())}
            peer_state = dataclasses.replace(state, decoder=decoder)
            try:
                result = run.federated_round(EVALUATE, peer_state, 1, 1, records, {})
            except RoundFailed as failure:  # the merge then ranks the two as without peers
                log.warning("%s: %s's decoder not scored: %s", run.task.name, task, failure)
                run.catalog.journal("peer-skipped", run.task.name, peer=task, reason=str(failure))
                continue
            pooled = ScoreSums()
            for reply in result.replies.values():
                pooled.merge(reply.scores)
            dice = pooled.means("dice")
            peers[task] = {s: float(v) for s, v in dice.items() if s in shared and v is not None}
            log.info("%s: %s's decoder scored here: %s", run.task.name, task, peers[task])
        return with_peers(state, peers), {PEERS: peers}

    def restore(self, run: TaskRun, state: TaskState, summary: Mapping[str, Any]) -> TaskState:
        """The peer skills from the journal."""
        return with_peers(state, dict(summary.get(PEERS, {})))


def with_peers(state: TaskState, peers: dict[str, dict[str, float]]) -> TaskState:
    """``state`` whose calibration carries ``peers``."""
    return dataclasses.replace(
        state, calibration=dataclasses.replace(state.calibration, peers=peers)
    )
