"""The benchmark's federated methods: this method and its ablations, run through Flower.

``continual`` is the full method (trimmed, calibrated decoders, the confidence merge);
``naive_merge`` merges the same decoders by the highest probability; ``no_trim`` is its
own run with full decoders. Each is scored after every stage on every task so far, the
merged label map and each decoder alone (which no later stage changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.bundle import Bundle, load_bundle
from core.inference import VolumeOutputs, combined_structures, merge_volume, volume_outputs
from core.merge import MergeSettings
from core.model.cost import count_parameters
from core.scores import ScoreSums
from server.catalog import Catalog
from server.plan import Plan
from simulations.evaluate import (
    LabelMap,
    merged_map,
    score_bundle_maps,
    score_means,
    score_model,
    upload_summary,
)
from simulations.run import simulate
from simulations.scenario import Scenario
from simulations.task_data import TaskData, load_tasks

Scores = dict[str, dict[str, dict[str, float | None]]]  # task -> metric -> structure -> mean


@torch.no_grad()
def merged_stages(
    bundle: Bundle,
    tasks: list[TaskData],
    merges: dict[str, MergeSettings],
    say: Callable[[str], None],
) -> dict[str, list[Scores]]:
    """Each merge's scores of the merged label map after each stage, on every task so far.

    Scored on the network's grid. The network runs once per test case: stage ``k``'s
    unified model is the encoder and the first ``k`` tasks' decoders, so its outputs are
    the first ``k`` decoders' votes.
    """
    names = [t.name for t in tasks]
    sums: dict[str, list[dict[str, ScoreSums]]] = {m: [{} for _ in tasks] for m in merges}
    for i, task in enumerate(tasks):

        def maps(outputs: VolumeOutputs, i: int = i) -> dict[tuple[str, int], LabelMap]:
            return {
                (method, k): merged_map(bundle, outputs, settings, names[: k + 1])
                for k in range(i, len(tasks))
                for method, settings in merges.items()
            }

        for _, scores in score_bundle_maps(bundle, task, maps, grid="network", hd95=True):
            for (method, k), case_scores in scores.items():
                sums[method][k].setdefault(task.name, ScoreSums()).merge(case_scores)
        say(f"{', '.join(merges)}: evaluated on {task.name} after every stage")
    return {
        m: [{t: score_means(s) for t, s in stage.items()} for stage in per]
        for m, per in sums.items()
    }


def _merged_seconds(bundle: Bundle, image: Path, settings: MergeSettings) -> float:
    """Wall time to predict one CT with the unified model: network and merge."""
    start = time.perf_counter()
    structures = combined_structures(bundle.model)
    merge_volume(volume_outputs(bundle, image), structures, settings, bundle.calibration)
    return round(time.perf_counter() - start, 2)


def federated(
    name: str,
    scenario: Scenario,
    plan: Plan,
    run: Path,
    say: Callable[[str], None],
    cpus: int | None = None,
) -> list[dict[str, Any]]:
    """Run the method through Flower into ``run`` (its sites share ``cpus`` cores).

    Returns:
        The results of ``name`` and, for the full method, of its naive-merge ablation
        (the same decoders, merged by the highest probability).
    """
    started = time.perf_counter()
    simulate(scenario, run, say, cpus)
    tasks = load_tasks(scenario, run / "sites", plan.training.val_fraction, plan.training.seed)
    catalog = Catalog(run / "catalog")
    seconds = catalog.phase_seconds()
    bundle = load_bundle(run / "catalog" / "bundle")
    uploads = upload_summary(catalog)
    merges = {name: bundle.merge}
    if name == "continual":
        merges["naive_merge"] = MergeSettings(rule="highest_probability")
    results = []
    prep, roi, image = bundle.preprocessing, bundle.roi_size, tasks[0].test_cases[0].image
    # a decoder alone is the same after every later stage: registration never changes it
    own = {t.name: score_means(score_model(bundle.model, t, prep, roi)) for t in tasks}
    own_stages: list[Scores] = [
        {t.name: own[t.name] for t in tasks[: k + 1]} for k in range(len(tasks))
    ]
    for method, stages in merged_stages(bundle, tasks, merges, say).items():
        settings = merges[method]
        results.append(
            {
                "method": method,
                "stages": stages,
                "own_stages": own_stages,
                "parameters": count_parameters(bundle.model),
                "uploads": uploads,
                "train_seconds": round(sum(seconds.values()), 1),
                "train_seconds_per_task": seconds,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "predict_seconds": _merged_seconds(bundle, image, settings),
            }
        )
    return results
