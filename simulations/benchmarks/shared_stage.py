"""The benchmark's shared first stage: one model on the first task, trained once.

The upper bound's first model and the first stage of fine-tuning, LwF and MiB are the
same model when seeds and recipe agree (:func:`simulations.benchmarks.baselines.upper_bound`). It
is trained once and its weights kept under the benchmark's folder, keyed by a hash of
everything that determines it (the encoder, the task, the bytes of its training cases,
the preprocessing and the training settings); every method starts from that file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from core.data.transforms import Preprocessing
from core.device import pick_device
from core.io import atomic_write_bytes
from core.local.training import LocalTrainSettings
from core.model import EncoderConfig
from simulations.benchmarks.baselines import GrowingSegmenter, upper_bound
from simulations.task_data import TaskData

FOLDER = "first-stage"  # under the benchmark's folder
SECONDS = "train_seconds"  # metadata: how long the training took, charged to every user


def settings_key(
    task: TaskData, encoder: EncoderConfig, prep: Preprocessing, settings: LocalTrainSettings
) -> str:
    """A hash of everything the first stage's weights depend on."""
    digest = hashlib.sha256()
    for case in task.train_cases:
        for file in case.files:
            digest.update(file.read_bytes())
    budget = dataclasses.asdict(task.budget(settings)) | {"progress": None}
    document = {
        "task": task.name,
        "structures": task.structures,
        "encoder": encoder.widths,
        "preprocessing": prep.to_json(),
        "settings": budget,
        "cases": digest.hexdigest(),
    }
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def first_stage(
    folder: Path,
    task: TaskData,
    encoder: EncoderConfig,
    prep: Preprocessing,
    settings: LocalTrainSettings,
) -> tuple[GrowingSegmenter, float]:
    """The first task's model, trained now or read back; and the seconds its training took.

    Args:
        folder: the benchmark's folder (weights in ``FOLDER/<task>-<hash>.safetensors``).
        task: the first task (its ``steps`` is the budget).
        encoder: encoder widths.
        prep: preprocessing.
        settings: the central methods' settings.

    Raises:
        ValueError: for a kept file that is not a readable model of this task.
    """
    name = f"{task.name}-{settings_key(task, encoder, prep, settings)[:20]}.safetensors"
    path = folder / FOLDER / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # methods trained side by side (--jobs): the second to arrive waits and reads it back
    with (path.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _trained_or_kept(path, task, encoder, prep, settings)


def _trained_or_kept(
    path: Path,
    task: TaskData,
    encoder: EncoderConfig,
    prep: Preprocessing,
    settings: LocalTrainSettings,
) -> tuple[GrowingSegmenter, float]:
    """:func:`first_stage` once its lock is held."""
    if path.is_file():
        model = GrowingSegmenter(encoder, task.structures)
        try:
            with safe_open(path, "pt") as f:
                seconds = float((f.metadata() or {})[SECONDS])
            model.load_state_dict(load_file(path))
        except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: expected the first stage's weights ({e})") from None
        return model.to(pick_device(None)), seconds
    start = time.perf_counter()
    model = upper_bound(task, encoder, prep, settings)
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={SECONDS: f"{seconds:.3f}"}))
    return model, seconds
