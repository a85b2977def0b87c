"""Scoring on a task's held-out cases: a model's own prediction, and a bundle's merged one.

Every report scores through this module, and every Dice comes from
:func:`core.local.evaluation.score_prediction` (MONAI's ``DiceMetric``):

- :func:`score_model`: a network alone, in the preprocessed space. A unified model is
  scored through the task's own decoder (what continual learning must never change); a
  baseline's single-head model through the task's structures among its classes.
- :func:`score_bundle`: the unified model's merged label map as ``csfl predict`` returns
  it, on the CT's own grid. :func:`score_bundle_maps` is the general form: the network
  runs once per case and any number of label maps made from its outputs (merge rules,
  the decoders of earlier stages, a decoder alone) are scored, on the CT's grid or on the
  network's.

:func:`evaluate_catalog` is ``csfl simulate``'s table: per structure, the own decoder and
the merged model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from core.bundle import Bundle, load_bundle
from core.data import Case, load_case
from core.data.transforms import Preprocessing, validation_transforms
from core.inference import VolumeOutputs, merge_volume, restore, volume_outputs
from core.local.evaluation import evaluate_segmenter, score_prediction
from core.merge import MergeSettings, output_structures
from core.model import ContinualSegmenter, Encoder, EncoderConfig
from core.model.cost import count_parameters
from core.scores import ScoreSums, task_mean
from server.catalog import Catalog
from simulations.scenario import Scenario
from simulations.task_data import TaskData, load_test_set

Grid = Literal["ct", "network"]  # the CT's own grid, or the preprocessed one the network sees
Key = TypeVar("Key")


def score_model(
    model: torch.nn.Module,
    task: TaskData,
    prep: Preprocessing,
    roi_size: Sequence[int],
    decoder: str | None = None,
) -> ScoreSums:
    """Dice and HD95 of a network alone on a task's test cases, in the preprocessed space.

    Args:
        model: a :class:`ContinualSegmenter`, scored through one decoder; or any module
            with a ``classes`` tuple whose output is organ logits over background +
            ``classes`` (a baseline's growing model). Voxels predicted as a class the
            task does not label count as background.
        task: the task (its test cases and structures).
        prep: preprocessing.
        roi_size: sliding-window size.
        decoder: the decoder scored (default ``task.name``; a joint model's covers
            several tasks).

    Raises:
        TypeError: for a module that is neither.
    """
    classes: Sequence[str]
    if isinstance(model, ContinualSegmenter):
        name = decoder or task.name
        classes = model.decoder(name).structures

        def organ(x: torch.Tensor) -> torch.Tensor:
            return model.organ_logits(x, name)

    else:
        grown = getattr(model, "classes", None)
        if not isinstance(grown, tuple):
            raise TypeError(f"{type(model).__name__}: expected a ContinualSegmenter or `classes`")
        classes, organ = grown, model
    return evaluate_segmenter(
        model, organ, classes, task.test_cases, task.test_table, task.structures, prep, roi_size
    )


def score_means(sums: ScoreSums) -> dict[str, dict[str, float | None]]:
    """Mean Dice and HD95 per structure, as the benchmark's results keep them."""
    return {"dice": sums.means("dice"), "hd95": sums.means("hd95")}


@dataclass(frozen=True)
class LabelMap:
    """A label map ``(1, 1, ...)`` on the network's grid; label ``i`` is ``structures[i - 1]``."""

    labels: torch.Tensor
    structures: Sequence[str]


def merged_map(
    bundle: Bundle,
    outputs: VolumeOutputs,
    settings: MergeSettings | None = None,
    tasks: Collection[str] | None = None,
) -> LabelMap:
    """The merged label map of some decoders' outputs, as prediction merges them.

    Args:
        bundle: the unified model (its calibration gates and weighs the decoders).
        outputs: every decoder's outputs over one volume.
        settings: the merge (default: the bundle's own).
        tasks: the decoders merged (default: all); the unified model after an earlier
            stage is the encoder and the decoders registered by then.
    """
    votes = [v for v in outputs.votes if tasks is None or v.task in tasks]
    structures = output_structures([v.structures for v in votes])
    now = dataclasses.replace(outputs, votes=votes)
    labels = merge_volume(now, structures, settings or bundle.merge, bundle.calibration)
    return LabelMap(labels, structures)


@dataclass(frozen=True)
class Truth:
    """A test case's ground truth in a task's indices (``i`` is ``structures[i - 1]``)."""

    labels: torch.Tensor  # (1, 1, ...)
    spacing: tuple[float, float, float]  # mm, for HD95


def case_truth(case: Case, task: TaskData, grid: Grid, prep: Preprocessing) -> Truth:
    """A test case's label map on the CT's own grid or preprocessed (``prep``) like its image."""
    if grid == "network":
        item = validation_transforms(prep, task.test_table, task.structures)({"case": case})
        return Truth(item["label"][None].long(), prep.spacing_mm)
    loaded = load_case(case, task.test_table)
    assert loaded.label is not None  # a test case has a label map
    indices = task.test_table.to_indices(loaded.label, task.structures).astype(np.int64)
    return Truth(torch.from_numpy(indices)[None, None], loaded.image.header.spacing)


def task_labels(label_map: LabelMap, structures: Sequence[str]) -> torch.Tensor:
    """A label map renumbered to a task's indices; structures the task lacks become 0."""
    lookup = torch.zeros(len(label_map.structures) + 1, dtype=torch.long)
    for j, structure in enumerate(structures, 1):
        if structure in label_map.structures:
            lookup[list(label_map.structures).index(structure) + 1] = j
    return lookup[label_map.labels.cpu().long()]


@torch.no_grad()
def score_bundle_maps(
    bundle: Bundle,
    task: TaskData,
    maps: Callable[[VolumeOutputs], Mapping[Key, LabelMap]],
    grid: Grid = "ct",
    hd95: bool = False,
) -> Iterator[tuple[Truth, dict[Key, ScoreSums]]]:
    """Per test case of a task: its ground truth and the scores of each map made from it.

    The network runs once per case (:func:`core.inference.volume_outputs`); ``maps``
    turns its outputs into named label maps on the network's grid. On the ``ct`` grid
    each map is resampled onto the CT's own grid first, as ``csfl predict`` writes it.
    """
    for case in task.test_cases:
        truth = case_truth(case, task, grid, bundle.preprocessing)
        outputs = volume_outputs(bundle, case.image)
        scores = {}
        for key, label_map in maps(outputs).items():
            if grid == "ct":
                n = len(label_map.structures)
                on_ct = restore(label_map.labels[0], outputs.affine, outputs.original, n)
                ct_labels = torch.from_numpy(on_ct.astype(np.int64))[None, None]
                label_map = LabelMap(ct_labels, label_map.structures)
            prediction = task_labels(label_map, task.structures)
            scores[key] = score_prediction(
                prediction, truth.labels, task.structures, truth.spacing, hd95=hd95
            )
        yield truth, scores


def score_bundle(
    bundle: Bundle, task: TaskData, settings: MergeSettings | None = None, hd95: bool = False
) -> ScoreSums:
    """Dice (and HD95 if asked) of the merged label map, as ``csfl predict`` returns it.

    Every decoder of the bundle votes; ``settings`` is the merge (default: the bundle's).
    """
    total = ScoreSums()

    def merged(outputs: VolumeOutputs) -> dict[str, LabelMap]:
        return {"merged": merged_map(bundle, outputs, settings)}

    for _, scores in score_bundle_maps(bundle, task, merged, hd95=hd95):
        total.merge(scores["merged"])
    return total


def evaluate_catalog(
    catalog: Catalog, scenario: Scenario, test_root: Path
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Dice per task and structure on each registered task's test cases (``sites/test``)."""
    bundle = load_bundle(catalog.root / "bundle")
    prep, roi = bundle.preprocessing, bundle.roi_size
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in bundle.model.tasks:
        task = load_test_set(scenario, test_root, name)
        own = score_model(bundle.model, task, prep, roi).means("dice")
        merged = score_bundle(bundle, task).means("dice")
        out[name] = {s: {"decoder": own.get(s), "merged": merged.get(s)} for s in task.structures}
    return out


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
        means = {
            kind: task_mean({s: v[kind] for s, v in structures.items()})
            for kind in ("decoder", "merged")
        }
        rows.append(f"| {task} | **mean** | {show(means['decoder'])} | {show(means['merged'])} |")
    return "\n".join(rows)


def upload_summary(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Per task: bytes each site uploaded, against FedAvg of the whole model every round.

    The baseline sends the encoder and the full (teacher) decoder in fp32 in every round
    this task had (its provenance's rounds per phase: training, search, distillation and
    calibration; evaluation uploads no weights).
    """
    config = EncoderConfig.from_json(catalog.index["encoder"]["config"])
    encoder_params = count_parameters(Encoder(config))  # the size only: no weights read
    out = {}
    for task in catalog.tasks():
        provenance = task["versions"][-1]["provenance"]
        rounds = sum(int(n) for n in dict(provenance.get("rounds", {})).values())
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
