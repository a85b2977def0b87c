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
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core import anatomy
from core.bundle import Bundle, load_bundle
from core.data import load_case, open_dataset
from core.inference import (
    VolumeOutputs,
    combined_structures,
    merge_volume,
    restore,
    volume_outputs,
)
from core.merge import MergeSettings
from core.vocabulary import Group
from simulations.scenario import Scenario

COMPARED = ("confidence", "no_gating", "no_anomaly", "highest_probability", "last_decoder")


def rules(bundle: Bundle) -> dict[str, MergeSettings]:
    """The merges compared: the bundle's own, its ablations and the simple rules."""
    own = bundle.merge
    return {
        "confidence": own,
        "no_gating": dataclasses.replace(own, gating=False),
        "no_anomaly": dataclasses.replace(own, anomaly_weight=0.0),
        "highest_probability": MergeSettings(rule="highest_probability"),
        "last_decoder": MergeSettings(rule="last_decoder"),
    }


def _dice(truth: NDArray[np.bool_], pred: NDArray[np.bool_]) -> float | None:
    total = truth.sum() + pred.sum()
    return None if total == 0 else float(2 * np.logical_and(truth, pred).sum() / total)


def _label_maps(
    bundle: Bundle, outputs: VolumeOutputs, structures: list[str]
) -> dict[str, NDArray[np.unsignedinteger]]:
    """Each rule's and each decoder's label map on the CT's grid."""
    maps = {}
    for name, settings in rules(bundle).items():
        merged = merge_volume(outputs, structures, settings, bundle.calibration)
        maps[name] = restore(merged[0], outputs.affine, outputs.original, len(structures))
    alone = MergeSettings(rule="highest_probability")
    for vote in outputs.votes:
        single = dataclasses.replace(outputs, votes=[vote])
        merged = merge_volume(single, structures, alone, {})
        maps[f"alone:{vote.task}"] = restore(
            merged[0], outputs.affine, outputs.original, len(structures)
        )
    return maps


def merge_report(bundle_dir: Path, scenario: Scenario, test_root: Path) -> dict[str, Any]:
    """Dice per method, structure and kind of case (``healthy`` or ``tumour``).

    Returns:
        ``{"overlap": [...], "cases": {kind: n}, "dice": {kind: {structure: {method:
        mean}}}}``; a method is a rule name or ``alone:<task>`` (a decoder by itself).
    """
    bundle = load_bundle(bundle_dir)
    model = bundle.model
    structures = combined_structures(model)
    owners = {s: [t for t, d in model.items() if s in d.structures] for s in structures}
    names = [t.name for t in scenario.tasks]
    sums: dict[str, dict[str, dict[str, list[float]]]] = {}
    cases = {"healthy": 0, "tumour": 0}
    for task in model.tasks:
        dataset = open_dataset(test_root / f"Dataset{names.index(task) + 1:03d}_{task}")
        lesions = [s for s in dataset.labels.structures if anatomy.get(s).group == Group.LESION]
        for case in dataset.cases:
            truth = load_case(case, dataset.labels).label
            assert truth is not None
            has_lesion = any((truth == dataset.labels.id_of(s)).any() for s in lesions)
            kind = "tumour" if has_lesion else "healthy"
            cases[kind] += 1
            maps = _label_maps(bundle, volume_outputs(bundle, case.image), structures)
            for structure in model.decoder(task).structures:
                gt = truth == dataset.labels.id_of(structure)
                label = structures.index(structure) + 1
                for method, labels in maps.items():
                    if method.startswith("alone:") and method[6:] not in owners[structure]:
                        continue
                    value = _dice(gt, labels == label)
                    if value is not None:
                        entry = sums.setdefault(kind, {}).setdefault(structure, {})
                        entry.setdefault(method, []).append(value)
    dice = {
        kind: {s: {m: float(np.mean(v)) for m, v in methods.items()} for s, methods in per.items()}
        for kind, per in sums.items()
    }
    overlap = [s for s in structures if len(owners[s]) > 1]
    return {"overlap": overlap, "cases": cases, "dice": dice, "merge": bundle.merge.to_json()}


def format_merge_report(report: dict[str, Any]) -> str:
    """Markdown: for each kind of case, overlapping structures first, methods as columns."""
    methods = [*COMPARED, "best single decoder"]
    lines = []
    for kind, per in report["dice"].items():
        lines += [
            f"\n{kind} cases ({report['cases'][kind]}):\n",
            "| structure | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 1) + "|",
        ]
        ordered = sorted(per, key=lambda s: (s not in report["overlap"], s))
        for structure in ordered:
            scores = per[structure]
            alone = [v for m, v in scores.items() if m.startswith("alone:")]
            row = [scores.get(m) for m in COMPARED] + [max(alone) if alone else None]
            mark = " (overlap)" if structure in report["overlap"] else ""
            cells = ["-" if v is None else f"{v:.3f}" for v in row]
            lines.append(f"| {structure}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
