"""How the merge rules compare on held-out cases, on healthy and on tumour-bearing ones.

For every test case of every registered task, the network runs once; the outputs are
then merged by each rule: the anomaly-aware ``confidence`` merge (the bundle's
settings), the same without gating or without the anomaly term, ``highest_probability``,
``last_decoder``, and each decoder alone. Dice is computed on the CT's own grid for the
task's structures. Structures that several decoders segment are the *overlap*; the
others should not change under any rule that respects them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from core import anatomy
from core.bundle import Bundle, load_bundle
from core.data import Case
from core.data.nifti import read_header
from core.data.transforms import IMAGE, prepare_image
from core.inference import VolumeOutputs, combined_structures
from core.merge import MergeSettings
from core.scores import ScoreSums
from core.vocabulary import Group
from simulations.benchmarks.merge_pictures import failing, save_picture
from simulations.evaluate import LabelMap, merged_map, score_bundle_maps
from simulations.scenario import Scenario
from simulations.task_data import load_test_set

COMPARED = ("confidence", "no_gating", "with_anomaly", "highest_probability", "last_decoder")
BEST = "best single decoder"  # per structure, the decoder alone that scores it best
OWN = "own decoder"
ALONE = "alone:"  # a method that is one decoder by itself: ``alone:<task>``


def rules(bundle: Bundle) -> dict[str, MergeSettings]:
    """The merges compared: the bundle's own, its ablations and the simple rules."""
    own = bundle.merge
    return {
        "confidence": own,
        "no_gating": dataclasses.replace(own, gating=False),
        "with_anomaly": dataclasses.replace(own, anomaly_weight=1.0),
        "highest_probability": MergeSettings(rule="highest_probability"),
        "last_decoder": MergeSettings(rule="last_decoder"),
    }


def _label_maps(bundle: Bundle, outputs: VolumeOutputs) -> dict[str, LabelMap]:
    """Each rule's and each decoder's label map."""
    maps = {name: merged_map(bundle, outputs, settings) for name, settings in rules(bundle).items()}
    alone = MergeSettings(rule="highest_probability")  # of one decoder: its arg-max
    for vote in outputs.votes:
        maps[ALONE + vote.task] = merged_map(bundle, outputs, alone, [vote.task])
    return maps


class Diagnostics:
    """Where each decoder may speak and which decoder's label the merge kept.

    ``domain[test set][decoder]``: the share of the test CTs' slices inside the domain of
    the decoder's background (where it may say anything at all).
    ``won[structure][decoder]``: the share of the merged structure's voxels where
    the decoder itself says that structure (decoders that agree share a voxel).
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.domain: dict[str, dict[str, list[float]]] = {}
        self.won: dict[str, dict[str, list[float]]] = {}
        self.last: dict[str, LabelMap] = {}

    def maps(self, task: str, outputs: VolumeOutputs) -> dict[str, LabelMap]:
        """:func:`_label_maps`, noting the domains and the winners on the way."""
        maps = _label_maps(self.bundle, outputs)
        self.last = maps
        factor = self.bundle.merge.domain_factor
        for vote in outputs.votes:
            inside = None if vote.domain is None else vote.domain[0] <= factor
            share = 1.0 if inside is None else float(inside.float().mean())
            self.domain.setdefault(task, {}).setdefault(vote.task, []).append(share)
        merged = maps["confidence"]
        for label, structure in enumerate(merged.structures, 1):
            where = merged.labels == label
            if not bool(where.any()):
                continue
            for vote in outputs.votes:
                if structure in vote.structures:
                    own = vote.label.long() == vote.structures.index(structure) + 1
                    agree = float((own & where).sum()) / float(where.sum())
                    self.won.setdefault(structure, {}).setdefault(vote.task, []).append(agree)
        return maps

    def picture(self, folder: Path, task: str, case: Case, scores: dict[str, ScoreSums]) -> None:
        """A PNG per structure the merge fails in the case whose maps came last."""
        failed = failing(scores, "confidence", ALONE)
        if not failed:  # the CT is read again only for a picture
            return
        image = prepare_image(self.bundle.preprocessing, read_header(case.image))[IMAGE]
        plain = torch.as_tensor(image)[0]
        merged = self.last["confidence"]
        for structure, best in failed:
            alone = self.last[best]
            focus = alone.labels[0, 0] == alone.structures.index(structure) + 1
            panels = [
                ("merged", merged.labels[0, 0], merged.structures),
                (best[len(ALONE) :] + " alone", alone.labels[0, 0], alone.structures),
            ]
            save_picture(folder / f"{task}_{case.case_id}_{structure}.png", plain, panels, focus)

    def to_json(self) -> dict[str, Any]:
        """Means over the cases."""

        def means(d: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
            return {k: {t: round(fmean(v), 3) for t, v in per.items()} for k, per in d.items()}

        return {"domain": means(self.domain), "won": means(self.won)}


def merge_report(
    bundle_dir: Path, scenario: Scenario, test_root: Path, pictures: Path | None = None
) -> dict[str, Any]:
    """Dice per method, structure and kind of case (``healthy`` or ``tumour``).

    A case is ``tumour`` when its ground truth holds one of the task's lesions. A decoder
    alone is scored only on the structures it segments. With ``pictures``, a PNG per
    structure the merge fails in a case (``simulations.benchmarks.merge_pictures``) goes there.

    Returns:
        ``{"overlap": [...], "cases": {kind: n}, "dice": {kind: {structure: {method:
        mean}}}, "tasks": {task: {structure: {method: mean}}}}`` (``tasks``: over every
        test case of the task); a method is a rule name or ``alone:<task>`` (a decoder
        by itself).
    """
    bundle = load_bundle(bundle_dir)
    model = bundle.model
    structures = combined_structures(model)
    owners = {s: [t for t, d in model.items() if s in d.structures] for s in structures}
    sums: dict[str, dict[str, ScoreSums]] = {}  # kind -> method -> sums
    by_task: dict[str, dict[str, ScoreSums]] = {}  # task -> method -> sums
    cases = {"healthy": 0, "tumour": 0}
    diagnostics = Diagnostics(bundle)
    for name in model.tasks:
        task = load_test_set(scenario, test_root, name)
        lesions = [
            i for i, s in enumerate(task.structures, 1) if anatomy.get(s).group == Group.LESION
        ]
        maps = functools.partial(diagnostics.maps, name)
        scored = score_bundle_maps(bundle, task, maps)
        for case, (truth, scores) in zip(task.test_cases, scored, strict=True):
            if pictures is not None:
                diagnostics.picture(pictures, name, case, scores)
            kind = "tumour" if any(bool((truth.labels == i).any()) for i in lesions) else "healthy"
            cases[kind] += 1
            for method, case_scores in scores.items():
                sums.setdefault(kind, {}).setdefault(method, ScoreSums()).merge(case_scores)
                by_task.setdefault(name, {}).setdefault(method, ScoreSums()).merge(case_scores)
    overlap = [s for s in structures if len(owners[s]) > 1]
    return {
        "overlap": overlap,
        "cases": cases,
        "dice": _dice(sums, owners),
        "tasks": _dice(by_task, owners),
        "merge": bundle.merge.to_json(),
        "skills": skills(bundle, overlap),
        **diagnostics.to_json(),
    }


def skills(bundle: Bundle, overlap: list[str]) -> dict[str, dict[str, float]]:
    """What ranks the decoders of an overlapping structure: validation Dice, per set of CTs.

    ``{"<structure> on <task>'s CTs": {decoder: Dice}}``: the task's own decoder and the
    earlier decoders its sites scored there (peer skills, ``server.peers``).
    """
    rows: dict[str, dict[str, float]] = {}
    for task, calibration in bundle.calibration.items():
        for structure in overlap:
            row = {task: calibration.skill[structure]} if structure in calibration.skill else {}
            row |= {p: d[structure] for p, d in calibration.peers.items() if structure in d}
            if row:
                rows[f"{structure} on {task}'s CTs"] = row
    return rows


def _dice(
    sums: dict[str, dict[str, ScoreSums]], owners: dict[str, list[str]]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {structure: {method: mean Dice}}}``; a decoder alone on its structures only."""
    dice: dict[str, dict[str, dict[str, float]]] = {}
    for group, per_method in sums.items():
        for method, method_sums in per_method.items():
            for structure, mean in method_sums.means("dice").items():
                if mean is not None and (
                    not method.startswith(ALONE) or method[len(ALONE) :] in owners[structure]
                ):
                    dice.setdefault(group, {}).setdefault(structure, {})[method] = mean
    return dice


def task_summary(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: mean Dice of each method over its structures, and its worst structure.

    The best single decoder of a structure is the decoder alone that scores it best.
    """
    out: dict[str, dict[str, Any]] = {}
    for task, per_structure in report["tasks"].items():
        rows: dict[str, list[float]] = {}
        losses = {}
        for structure, scores in per_structure.items():
            alone = {m: v for m, v in scores.items() if m.startswith(ALONE)}
            best = max(alone.values())
            rows.setdefault(BEST, []).append(best)
            rows.setdefault(OWN, []).append(alone.get(ALONE + task, best))
            for method in COMPARED:
                rows.setdefault(method, []).append(scores[method])
            losses[structure] = best - scores["confidence"]
        means = {method: fmean(values) for method, values in rows.items()}
        worst = max(losses, key=lambda s: losses[s])
        out[task] = {
            "dice": means,
            "ratio": means["confidence"] / means[BEST] if means[BEST] else None,
            "worst_structure": worst,
            "worst_loss": losses[worst],
        }
    return out


def format_merge_report(report: dict[str, Any]) -> str:
    """Markdown: per task, the merge against its best single decoders, then the cases.

    For each kind of case, overlapping structures first and methods as columns; then the
    shares of slices inside each decoder's domain and of voxels each decoder won, and the
    validation Dice that rank the decoders of each overlapping structure.
    """
    lines = [
        "| task | own decoder | merged | best single decoders | merged / best | worst structure |",
        "|---|---|---|---|---|---|",
    ]
    for task, row in task_summary(report).items():
        dice = row["dice"]
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"| {task} | {dice[OWN]:.3f} | {dice['confidence']:.3f} | {dice[BEST]:.3f} | "
            f"{ratio} | {row['worst_structure']} ({-row['worst_loss']:+.3f}) |"
        )
    methods = [*COMPARED, BEST]
    for kind, per in report["dice"].items():
        lines += [
            f"\n{kind} cases ({report['cases'][kind]}):\n",
            "| structure | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 1) + "|",
        ]
        ordered = sorted(per, key=lambda s: (s not in report["overlap"], s))
        for structure in ordered:
            scores = per[structure]
            alone = [v for m, v in scores.items() if m.startswith(ALONE)]
            values = [scores.get(m) for m in COMPARED] + [max(alone) if alone else None]
            mark = " (overlap)" if structure in report["overlap"] else ""
            cells = ["-" if v is None else f"{v:.3f}" for v in values]
            lines.append(f"| {structure}{mark} | " + " | ".join(cells) + " |")
    lines += _shares("Share of each test set's slices inside a decoder's domain", report["domain"])
    lines += _shares("Share of a merged structure's voxels its decoders said", report["won"])
    title = "Validation Dice of the decoders of an overlapping structure, by the sites' CTs"
    lines += _shares(title, report.get("skills", {}))  # reports from before peer skills lack it
    return "\n".join(lines)


def _shares(title: str, table: dict[str, dict[str, float]]) -> list[str]:
    """A Markdown table of shares, rows as given, a column per decoder."""
    decoders = sorted({d for per in table.values() for d in per})
    lines = [
        f"\n{title}:\n",
        "| | " + " | ".join(decoders) + " |",
        "|---" * (len(decoders) + 1) + "|",
    ]
    for row, per in table.items():
        cells = ["-" if d not in per else f"{per[d]:.2f}" for d in decoders]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines
