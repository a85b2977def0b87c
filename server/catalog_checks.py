"""What the catalog index may hold: checks on metrics, calibration and index entries.

Every function returns human-readable problems, one line each, empty when all is well, so
that :meth:`server.catalog.Catalog.register` can refuse an entry before anything is written
and :meth:`server.catalog.Catalog.verify` can list everything wrong with a stored catalog.
Metrics and the calibration skills come from sites' evaluate replies, so they are bounded
here: Dice in [0, 1], HD95 finite and >= 0, counts whole and >= 0, only known structures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from core import anatomy
from core.data.transforms import Preprocessing
from core.merge import Calibration
from core.model import EncoderConfig, Genotype, check_task_name
from core.scores import METRICS, RATIOS


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _score_problem(metric: str, value: Any) -> str | None:
    if value is None:
        return None
    if not _is_number(value):
        return f"{value!r}, expected a finite number or null"
    if metric in RATIOS and not 0.0 <= value <= 1.0:
        return f"{value!r}, expected a {'Dice' if metric == 'dice' else metric} value in [0, 1]"
    if metric == "hd95" and value < 0.0:
        return f"{value!r}, expected a distance >= 0 mm"
    return None


def metric_problems(metrics: Any, structures: Sequence[str], where: str = "metrics") -> list[str]:
    """Problems with a version's metrics.

    Args:
        metrics: ``{"dice": {structure: value or None}, "hd95": {...}, <count>: int, ...}``.
        structures: the decoder's structures (the only names a score may have).
        where: a prefix for messages.
    """
    if not isinstance(metrics, Mapping):
        return [f"{where}: {type(metrics).__name__}, expected an object"]
    problems = []
    for key, value in metrics.items():
        if key in METRICS:  # per-structure scores; any other metric is a count
            if not isinstance(value, Mapping):
                problems.append(f"{where}.{key}: expected an object of structure -> value")
                continue
            for structure, score in value.items():
                if structure not in structures:
                    problems.append(
                        f"{where}.{key}: structure {structure!r} is not one of the decoder's"
                    )
                elif problem := _score_problem(key, score):
                    problems.append(f"{where}.{key}[{structure!r}] = {problem}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{where}.{key} = {value!r}, expected a count (whole number >= 0)")
    return problems


def calibration_problems(
    calibration: Any, structures: Sequence[str], where: str = "calibration"
) -> list[str]:
    """Problems with a stored calibration.

    Skills and peer skills in [0, 1], of the decoder's structures (a peer is scored on the
    structures it shares with the decoder), peers named like tasks.
    """
    try:
        parsed = Calibration.from_json(calibration)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        return [f"{where}: {e}"]
    tables = {"skill": parsed.skill, **{f"peers.{t}": d for t, d in parsed.peers.items()}}
    problems = [
        f"{where}.{name}: structure {s!r} is not one of the decoder's"
        for name, table in tables.items()
        for s in table
        if s not in structures
    ]
    for task in parsed.peers:
        try:
            check_task_name(task)
        except ValueError as e:
            problems.append(f"{where}.peers: {e}")
    return problems


def json_problems(value: Any, where: str) -> list[str]:
    """Problems storing ``value`` as strict JSON (no NaN or infinity, plain types only)."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError) as e:
        return [f"{where}: not storable as JSON ({e})"]
    return []


def structure_problems(structures: Any, where: str = "structures") -> list[str]:
    """Problems with a decoder's structure list (non-empty, distinct, in the vocabulary)."""
    if not isinstance(structures, list) or not structures:
        return [f"{where}: expected a non-empty list of structure names"]
    problems = (
        [f"{where}: {structures} repeat a name"] if len(set(structures)) < len(structures) else []
    )
    for name in structures:
        try:
            anatomy.get(name)
        except (KeyError, TypeError):
            problems.append(f"{where}: {name!r} is not in the anatomy vocabulary")
    return problems


def version_problems(version: Any, number: int, encoder_sha: str | None, where: str) -> list[str]:
    """Problems with one stored decoder version, apart from its file.

    Args:
        version: the version's index entry.
        number: the version number it must carry (1, 2, ... in order).
        encoder_sha: the catalog's encoder weight hash.
        where: a prefix for messages (e.g. ``"catalog.json: task 'abdomen' v1"``).
    """
    if not isinstance(version, Mapping):
        return [f"{where}: expected an object"]
    problems = []
    if version.get("version") != number:
        problems.append(f"{where}: version {version.get('version')!r}, expected {number}")
    missing = [k for k in ("file", "sha256", "genotype", "structures") if k not in version]
    if missing:
        return [*problems, f"{where}: missing {missing}"]
    try:
        Genotype.from_json(version["genotype"])
    except (ValueError, TypeError) as e:
        problems.append(f"{where}: {e}")
    structures = version["structures"]
    problems += structure_problems(structures, f"{where}: structures")
    names = structures if isinstance(structures, list) else []
    problems += metric_problems(version.get("metrics", {}), names, f"{where}: metrics")
    problems += calibration_problems(version.get("calibration"), names, f"{where}: calibration")
    if not isinstance(version.get("provenance", {}), Mapping):
        problems.append(f"{where}: provenance: expected an object")
    if version.get("encoder_sha256") != encoder_sha:
        problems.append(f"{where}: trained on encoder {str(version.get('encoder_sha256'))[:12]}")
    return problems


def task_name_problems(name: Any, where: str) -> list[str]:
    """Problems with a task name (it becomes a folder and a module key)."""
    try:
        check_task_name(name)
    except (ValueError, TypeError) as e:
        return [f"{where}: {e}"]
    return []


def encoder_entry_problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """Problems with the encoder's index entry, apart from its file."""
    problems = []
    try:
        EncoderConfig.from_json(entry["config"])
        Preprocessing.from_json(entry["preprocessing"])
    except (ValueError, TypeError, KeyError) as e:
        problems.append(f"{where}: {e!s}")
    patch = entry.get("patch")
    if not (
        isinstance(patch, list)
        and len(patch) == 3
        and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)
    ):
        problems.append(f"{where}: patch {patch!r}, expected three whole numbers > 0")
    return problems
