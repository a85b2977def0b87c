"""The benchmark's report: summary figures, a Markdown document and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.scores import task_mean

LABELS = {
    "continual": "this method",
    "naive_merge": "this method, naive merge",
    "no_trim": "this method, no trimming",
    "upper_bound": "upper bound (a model per task)",
    "joint": "joint (one model, all data)",
    "federated_joint": "joint by FedAvg over all sites (partial labels)",
    "finetune": "sequential fine-tuning",
    "lwf": "LwF",
    "mib": "MiB",
}


def task_dice(scores: dict[str, Any]) -> float | None:
    """A task's mean Dice in a kept result (:func:`core.local.evaluation.task_mean`)."""
    return task_mean(scores["dice"])


def summarize(method: dict[str, Any], tasks: list[str], key: str = "stages") -> dict[str, Any]:
    """Per-task Dice after the last stage, their mean, and forgetting.

    Forgetting of a task: its Dice right after its own stage minus its Dice after each
    later stage; ``forgetting`` is the mean over old tasks of the drop at the end, and
    ``max_forgetting`` the largest drop seen at any later stage. ``key`` picks the
    figures: ``stages`` (what the model answers) or ``own_stages`` (this method's
    decoders each alone).
    """
    stages = method[key]
    final = {t: task_dice(stages[-1][t]) for t in tasks if t in stages[-1]}
    drops, worst = [], 0.0
    for i, task in enumerate(tasks[:-1]):
        learnt = task_dice(stages[i][task])
        later = [task_dice(stage[task]) for stage in stages[i + 1 :]]
        if learnt is None or any(v is None for v in later):
            continue
        steps = [learnt - float(v) for v in later if v is not None]
        drops.append(steps[-1])
        worst = max(worst, *steps)
    values = [v for v in final.values() if v is not None]
    return {
        "final_dice": final,
        "mean_dice": float(np.mean(values)) if values else None,
        "forgetting": float(np.mean(drops)) if drops else 0.0,
        "max_forgetting": worst,
    }


def upload_ratio(method: dict[str, Any]) -> float | None:
    """Mean over tasks of bytes a site uploaded / full-model FedAvg for the same rounds."""
    ratios = [u["ratio"] for u in method.get("uploads", {}).values() if u.get("ratio")]
    return float(np.mean(ratios)) if ratios else None


def _show(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def _rows(methods: dict[str, Any], tasks: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """``(label, result, figures key)`` per headline row: this method also decoder by decoder."""
    rows = []
    for m, r in methods.items():
        rows.append((LABELS.get(m, m), r, "stages"))
        if m == "continual" and "own_stages" in r:
            rows.append(("this method, each decoder alone", r, "own_stages"))
    return rows


def markdown(doc: dict[str, Any]) -> str:
    """The report: headline table, ratios per task, Dice per stage, per-structure Dice and HD95."""
    tasks, methods = doc["tasks"], doc["methods"]
    one = doc["one_model_parameters"]
    refs = {m: summarize(methods[m], tasks) for m in ("upper_bound", "joint") if m in methods}
    upper = refs.get("upper_bound", {}).get("mean_dice")
    joint = refs.get("joint", {}).get("mean_dice")
    lines = [
        f"# Benchmark: scenario `{doc['scenario']}`"
        + (" (quick)" if doc["quick"] else "")
        + f", {doc.get('budget', 'scenario')} budget",
        "",
        f"Machine: {doc['machine']} ({doc['device']}). Dice on held-out cases after the last "
        "stage, per task and their mean (this method: its merged label map; and each of its "
        "decoders alone); x upper bound, x joint: that mean over the reference's; "
        "forgetting: mean drop of old tasks' Dice at the end (max over stages in brackets); "
        "parameters against one encoder + one full decoder "
        f"({one:,}); upload: bytes per site / full-model FedAvg for the same rounds; "
        "steps: optimiser steps over all tasks and sites; training s: seconds spent training "
        "(for Flower methods, the sites' own).",
        "",
        "| method | " + " | ".join(tasks) + " | mean Dice | x upper bound | x joint | forgetting "
        "| parameters | x one model | upload | steps | training s | prediction s |",
        "|---|" + "---|" * (len(tasks) + 10),
    ]
    for label, r, key in _rows(methods, tasks):
        s = summarize(r, tasks, key)
        steps = sum(r["steps_per_task"].values()) if "steps_per_task" in r else None
        lines.append(
            f"| {label} | "
            + " | ".join(_show(s["final_dice"].get(t)) for t in tasks)
            + f" | {_show(s['mean_dice'])} | {_show(_ratio(s['mean_dice'], upper), '{:.2f}')} "
            f"| {_show(_ratio(s['mean_dice'], joint), '{:.2f}')} "
            f"| {s['forgetting']:.3f} ({s['max_forgetting']:.3f}) "
            f"| {r['parameters']:,} "
            f"| {r['parameters'] / one:.2f} | {_show(upload_ratio(r), '{:.1%}')} "
            f"| {_show(steps, '{:,}')} | {r['train_seconds']:.0f} | {r['predict_seconds']:.2f} |"
        )
    if refs:
        named = " / ".join(f"x {LABELS[m].split(' (')[0]}" for m in refs)
        lines += ["", f"## Each task's Dice over the references': {named}", ""]
        lines += ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for label, r, key in _rows(methods, tasks):
            final = summarize(r, tasks, key)["final_dice"]
            cells = [
                " / ".join(
                    _show(_ratio(final.get(t), ref["final_dice"].get(t)), "{:.2f}")
                    for ref in refs.values()
                )
                for t in tasks
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean Dice per task after each stage", ""]
    lines += ["| method | task | " + " | ".join(f"stage {i + 1}" for i in range(len(tasks))) + " |"]
    lines += ["|---|---|" + "---|" * len(tasks)]
    for m, r in methods.items():
        for task in tasks:
            row = [_show(task_dice(st[task])) if task in st else "" for st in r["stages"]]
            lines.append(f"| {LABELS.get(m, m)} | {task} | " + " | ".join(row) + " |")
    lines += ["", "## Per structure after the last stage: Dice / HD95 (mm)", ""]
    lines += ["| task | structure | " + " | ".join(LABELS.get(m, m) for m in methods) + " |"]
    lines += ["|---|---|" + "---|" * len(methods)]
    for task in tasks:
        structures = list(next(iter(methods.values()))["stages"][-1][task]["dice"])
        for structure in structures:
            cells = []
            for r in methods.values():
                final = r["stages"][-1][task]
                dice, hd = final["dice"].get(structure), final["hd95"].get(structure)
                cells.append(f"{_show(dice)} / {_show(hd, '{:.0f}')}")
            lines.append(f"| {task} | {structure} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(doc: dict[str, Any], out: Path) -> list[Path]:
    """Dice per task per stage for each method, and size against mean Dice (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = doc["tasks"], doc["methods"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m, r in methods.items():
            points = [
                (i + 1, task_dice(st[task])) for i, st in enumerate(r["stages"]) if task in st
            ]
            xs = [x for x, y in points if y is not None]
            ax.plot(xs, [y for _, y in points if y is not None], marker="o", label=LABELS[m])
        ax.set(title=task, xlabel="stage", ylabel="mean Dice", ylim=(0, 1))
        ax.set_xticks(range(1, len(tasks) + 1))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    curves = out / "dice_per_stage.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for m, r in methods.items():
        mean = summarize(r, tasks)["mean_dice"]
        if mean is not None:
            ax.scatter(r["parameters"] / 1e6, mean, label=LABELS[m])
    ax.set(xlabel="parameters (millions)", ylabel="mean Dice, all tasks", title=doc["scenario"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    size = out / "size_vs_dice.png"
    fig.savefig(size, dpi=100)
    plt.close(fig)
    return [curves, size]


def overlay_figure(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> Path:
    """One axial slice per task: the CT, its ground truth, this method's merged prediction.

    Args:
        rows: ``(task, image, truth, prediction)`` with 2D slices; labels index the
            task's structures from 1.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(6, 3 * len(rows)), squeeze=False)
    for (task, image, truth, prediction), pair in zip(rows, axes, strict=True):
        top = max(int(truth.max()), int(prediction.max()), 1)
        panels = zip(pair, (truth, prediction), ("ground truth", "prediction"), strict=True)
        for ax, label, title in panels:
            ax.imshow(image.T, cmap="gray", origin="lower")
            shown = np.ma.masked_equal(label.T, 0)
            ax.imshow(shown, cmap="tab20", vmin=1, vmax=max(top, 20), alpha=0.55, origin="lower")
            ax.set_title(f"{task}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
