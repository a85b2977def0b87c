"""``csfl privacy-audit``: what the weights a site sends reveal about its patients.

A membership-inference attack on what actually leaves a site, as the attacker would hold
it: the coordinator (the full decoder the task's training phase ended with, the catalog's
``base``/``teacher`` checkpoint, before any trimming) and whoever gets the exported bundle
(its decoder for the task). The attack is the loss threshold of Yeom et al. (2018): a case
the decoder was trained on tends to get a lower loss than one it never saw, so the
attacker ranks cases by the decoder's loss (MONAI's Dice + cross-entropy, the training
objective, on the whole preprocessed case through the frozen encoder).

*Members* are the training splits of the task's sites (the cases their phases read);
*non-members* are the task's held-out cases, drawn by the same scanner, region and
lesion rate as its first site (:func:`simulations.sites.write_scenario`), so the attack
cannot win on the scanner alone. It reports the ROC AUC (MONAI's ``compute_roc_auc``;
0.5 is chance) and the true-positive rate at a false-positive rate of at most 1 %
(the share of members it names while naming at most 1 % of the non-members; with fewer
than 100 non-members that is: while naming none of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_roc_auc

from core.data import Case, LabelTable
from core.data.transforms import Preprocessing, validation_transforms
from core.local.training import SegmentationLoss
from core.model import ContinualSegmenter, Decoder, Encoder
from core.protocol import PRIVACY
from simulations.benchmarks.finished_run import open_run
from simulations.scenario import Scenario

FPR = 0.01  # the false-positive rate the attack's TPR is read at
TARGETS = ("coordinator", "bundle")  # who holds the weights attacked


@torch.no_grad()
def case_losses(
    encoder: Encoder,
    decoder: Decoder,
    cases: Sequence[Case],
    table: LabelTable,
    prep: Preprocessing,
    roi_size: Sequence[int],
) -> list[float]:
    """Each case's loss under ``decoder`` on the frozen ``encoder`` (whole case, sliding windows).

    Args:
        encoder: the shared encoder.
        decoder: the decoder attacked (its structures are the loss's classes).
        cases: the cases, labelled in ``table``'s ids.
        table: their label table.
        prep: the bundle's preprocessing.
        roi_size: the sliding window.
    """
    model = ContinualSegmenter(encoder)
    model.add_decoder("attacked", decoder)
    model.eval()
    chain = validation_transforms(prep, table, decoder.structures)
    loss = SegmentationLoss()
    device = next(model.parameters()).device
    losses = []
    for case in cases:
        item = chain({"case": case})
        image = item["image"][None].to(device)
        logits = sliding_window_inference(
            image, roi_size, 1, lambda x: model.organ_logits(x, "attacked"), overlap=0.25
        )
        assert isinstance(logits, torch.Tensor)
        losses.append(float(loss(logits.cpu(), item["label"][None].long())))
    return losses


@dataclass(frozen=True)
class Attack:
    """How well the loss tells members from non-members.

    Attributes:
        auc: ROC AUC of the score ``-loss`` (0.5: chance, 1: every member ranked first).
        tpr_at_low_fpr: share of members named at a false-positive rate of at most
            :data:`FPR`.
        members: member cases.
        held_out: non-member cases.
        member_loss: median loss of the members.
        held_out_loss: median loss of the non-members.
    """

    auc: float
    tpr_at_low_fpr: float
    members: int
    held_out: int
    member_loss: float
    held_out_loss: float


def loss_attack(member_losses: Sequence[float], held_out_losses: Sequence[float]) -> Attack:
    """The loss-threshold attack's AUC and TPR at low FPR.

    Raises:
        ValueError: without a member or a non-member, or for a non-finite loss.
    """
    if not member_losses or not held_out_losses:
        raise ValueError("the attack needs at least one member and one held-out case")
    losses = np.asarray([*member_losses, *held_out_losses], dtype=np.float64)
    if not np.isfinite(losses).all():
        raise ValueError("a case's loss is not finite")
    scores = -losses
    truth = np.r_[np.ones(len(member_losses)), np.zeros(len(held_out_losses))]
    auc = compute_roc_auc(torch.from_numpy(scores), torch.from_numpy(truth))
    assert isinstance(auc, float)  # one class of scores: a number
    # the threshold: the (k+1)-th highest non-member score, k = the most false positives
    # allowed; a case is called a member when its score is strictly above it
    outside = np.sort(scores[len(member_losses) :])[::-1]
    allowed = int(np.floor(FPR * len(outside)))
    threshold = outside[min(allowed, len(outside) - 1)]
    tpr = float((scores[: len(member_losses)] > threshold).mean())
    return Attack(
        auc,
        tpr,
        len(member_losses),
        len(held_out_losses),
        median(member_losses),
        median(held_out_losses),
    )


def privacy_audit(folder: Path, scenario: Scenario) -> dict[str, Any]:
    """Attack every registered task's decoders of a finished ``csfl simulate`` run.

    Returns:
        ``{task: {"privacy": {"delta": d, "epsilon": {site: e}} or None, "coordinator":
        Attack, "bundle": Attack}}`` as JSON (attacks as dicts).

    Raises:
        ValueError: for a folder that holds no finished run.
    """
    run = open_run(folder, scenario)
    report: dict[str, Any] = {}
    for task_entry in run.catalog.tasks():
        name = task_entry["name"]
        task = run.tasks[name]
        decoders = (run.trained_decoder(name), run.unified.decoder(name))
        attacks = {}
        for target, decoder in zip(TARGETS, decoders, strict=True):
            members, outside = (
                case_losses(run.encoder, decoder, cases, table, run.prep, run.roi)
                for cases, table in (
                    (task.train_cases, task.table),
                    (task.test_cases, task.test_table),
                )
            )
            attacks[target] = asdict(loss_attack(members, outside))
        privacy = task_entry["versions"][-1]["provenance"].get(PRIVACY)
        report[name] = {"privacy": privacy, **attacks}
    return report


def spent(privacy: dict[str, Any] | None) -> str:
    """A task's provenance ``privacy`` as a table cell: its largest site's epsilon."""
    return f"{max(privacy['epsilon'].values(), default=0.0):.2f}" if privacy else "no DP"


def format_audit(report: dict[str, Any]) -> str:
    """A Markdown table: a row per task and target."""
    lines = [
        "| task | epsilon (largest site) | weights of | members / held out | "
        "median loss members / held out | attack AUC | TPR at 1% FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, row in report.items():
        epsilon = spent(row["privacy"])
        for target in TARGETS:
            a = row[target]
            cells = [
                task,
                epsilon,
                target,
                f"{a['members']} / {a['held_out']}",
                f"{a['member_loss']:.3f} / {a['held_out_loss']:.3f}",
                f"{a['auc']:.3f}",
                f"{a['tpr_at_low_fpr']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
