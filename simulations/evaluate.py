"""Held-out evaluation of the catalog's unified model: per task, per structure Dice.

Two figures per structure: its own decoder alone (``decoder``, in the preprocessed space;
this is what continual learning must never change), and the unified model's merged
prediction on the CT's own grid (``merged``, what a user gets from ``csfl predict``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.bundle import load_bundle
from core.data import load_case, open_dataset
from core.evaluation import ScoreSums, evaluate_task
from core.inference import predict_volume
from core.model import Encoder, EncoderConfig
from core.model.cost import count_parameters
from server.catalog import Catalog
from simulations.scenario import Scenario


def evaluate_catalog(
    catalog: Catalog, scenario: Scenario, test_root: Any
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Dice per task and structure on each registered task's test cases."""
    bundle = load_bundle(catalog.root / "bundle")
    names = [t.name for t in scenario.tasks]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for task in bundle.model.tasks:
        dataset = open_dataset(test_root / f"Dataset{names.index(task) + 1:03d}_{task}")
        own = evaluate_task(
            bundle.model, task, dataset.cases, dataset.labels, bundle.preprocessing, bundle.roi_size
        ).means("dice")
        merged = ScoreSums()
        for case in dataset.cases:
            prediction = predict_volume(bundle, case.image)
            truth = load_case(case, dataset.labels).label
            assert truth is not None
            for structure in bundle.model.decoder(task).structures:
                gt = truth == dataset.labels.id_of(structure)
                pred = prediction.labels == prediction.structures.index(structure) + 1
                if gt.any() or pred.any():
                    merged.add(
                        "dice",
                        structure,
                        2 * np.logical_and(gt, pred).sum() / (gt.sum() + pred.sum()),
                    )
        means = merged.means("dice")
        out[task] = {
            s: {"decoder": own.get(s), "merged": means.get(s)}
            for s in bundle.model.decoder(task).structures
        }
    return out


def task_mean(structures: dict[str, dict[str, float | None]], kind: str) -> float | None:
    """Mean Dice over a task's structures that were scored."""
    values = [float(x) for v in structures.values() if (x := v[kind]) is not None]
    return float(np.mean(values)) if values else None


def format_table(dice: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """A Markdown table: task, structure, decoder Dice, merged Dice, and each task's mean."""

    def show(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = ["| task | structure | Dice (own decoder) | Dice (merged model) |", "|---|---|---|---|"]
    for task, structures in dice.items():
        for name, scores in structures.items():
            rows.append(
                f"| {task} | {name} | {show(scores['decoder'])} | {show(scores['merged'])} |"
            )
        means = {kind: task_mean(structures, kind) for kind in ("decoder", "merged")}
        rows.append(f"| {task} | **mean** | {show(means['decoder'])} | {show(means['merged'])} |")
    return "\n".join(rows)


def upload_summary(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Per task: bytes each site uploaded, against FedAvg of the whole model every round.

    The baseline sends the encoder and the full (teacher) decoder in fp32 in every round
    this task had: training, search, distillation and calibration rounds.
    """
    config = EncoderConfig.from_json(catalog.index["encoder"]["config"])
    encoder_params = count_parameters(Encoder(config))  # the size only: no weights read
    out = {}
    for task in catalog.tasks():
        provenance = task["versions"][-1]["provenance"]
        rounds = sum(
            int(provenance.get(k, 0))
            for k in ("rounds", "search_rounds", "distill_rounds", "calibrate_rounds")
        )
        teacher = int(provenance.get("teacher_parameters", 0))
        full = 4 * (encoder_params + teacher) * rounds
        uploads = dict(provenance.get("bytes_up", {}))
        mean = float(np.mean(list(uploads.values()))) if uploads else 0.0
        out[task["name"]] = {
            "bytes_up_per_site": uploads,
            "full_model_fedavg_bytes_per_site": full,
            "ratio": mean / full if full else None,
        }
    return out
