"""The decoder catalog: the source of truth for what the federation has learnt.

```
CATALOG/
  catalog.json                    index: encoder, tasks and their decoder versions
  journal.jsonl                   append-only phase events (one JSON object per line)
  encoder/<sha256>.safetensors    the frozen encoder, named by its weight hash
  decoders/<task>/v<N>.safetensors
  checkpoints/<task>/<phase>.safetensors + .json   outputs of finished phases
  checkpoints/<task>/<phase>.round<N>.*           rounds of the phase in flight (server.rounds)
  bundle/                         the unified model exported after each task
```

Every file is written atomically (temporary file, fsync, rename) and its sha256 is
recorded and checked on reading, so a crash at any moment loses at most the phase in
flight: a restart finds the finished phases in the journal and their outputs on disk.
A registration checks its metrics and calibration (``server.catalog_checks``) before
writing anything and either adds the version or leaves the catalog as it was;
:meth:`Catalog.verify` re-checks every hash, metric and range of a stored catalog.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from core.bundle import Bundle, save_bundle
from core.data.transforms import Preprocessing
from core.io import atomic_write_bytes, atomic_write_json
from core.merge import Calibration
from core.model import (
    ContinualSegmenter,
    Decoder,
    Encoder,
    EncoderConfig,
    Genotype,
    state_bytes,
)
from server.catalog_checks import (
    calibration_problems,
    encoder_entry_problems,
    json_problems,
    metric_problems,
    task_name_problems,
    version_problems,
)

FORMAT = "continual-segment-fl catalog"
VERSION = 1
INDEX = "catalog.json"
JOURNAL = "journal.jsonl"


class CatalogError(RuntimeError):
    """A catalog file that is missing, altered or of an unknown version."""


class RegistrationError(CatalogError):
    """An entry that may not be stored (bad metrics or calibration); nothing was written."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Catalog:
    """A catalog folder; create it empty or open it as a previous run left it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / INDEX
        if index.is_file():
            try:
                self.index = json.loads(index.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CatalogError(f"{index}: not JSON ({e})") from None
            if not isinstance(self.index, dict) or not (
                self.index.get("format") == FORMAT and self.index.get("version") == VERSION
            ):
                raise CatalogError(f"{index}: not a version-{VERSION} {FORMAT}")
        else:
            self.index = {"format": FORMAT, "version": VERSION, "encoder": None, "tasks": []}

    # -- journal -------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        """Where phase events are appended."""
        return self.root / JOURNAL

    def journal(self, event: str, task: str | None = None, **data: Any) -> None:
        """Append one event and fsync it (a crash never loses a recorded event)."""
        line = json.dumps({"time": _now(), "event": event, "task": task, **data}) + "\n"
        with open(self.journal_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every event so far (a line cut short by a crash is ignored)."""
        if not self.journal_path.is_file():
            return []
        out = []
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def phase_end(self, task: str, phase: str) -> dict[str, Any] | None:
        """The journal's record of a finished phase of a task (the latest); None if unfinished."""
        return next(
            (
                e
                for e in reversed(self.events())
                if e["event"] == "phase-end" and e["task"] == task and e.get("phase") == phase
            ),
            None,
        )

    def phase_done(self, task: str, phase: str) -> bool:
        """Whether a phase of a task has finished (its output is on disk)."""
        return self.phase_end(task, phase) is not None

    def phase_seconds(self) -> dict[str, float]:
        """Per task, the server's wall time over its finished phases.

        A phase skipped by a resumed run was journalled once, when it ran, so resuming
        neither loses nor double-counts its time.
        """
        out: dict[str, float] = {}
        for e in self.events():
            if e["event"] == "phase-end" and e["task"] is not None:
                out[e["task"]] = out.get(e["task"], 0.0) + float(e.get("seconds", 0.0))
        return out

    # -- files ---------------------------------------------------------------------------
    def _write(self, rel: str, data: bytes) -> dict[str, str]:
        atomic_write_bytes(self.root / rel, data)
        return {"file": rel, "sha256": _sha256(data)}

    def _read(self, entry: dict[str, str]) -> dict[str, torch.Tensor]:
        path = self.root / entry["file"]
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise CatalogError(f"{path}: outside the catalog folder {self.root}")
        if not path.is_file():
            raise CatalogError(f"{path}: missing")
        data = path.read_bytes()
        if _sha256(data) != entry["sha256"]:
            raise CatalogError(f"{path}: sha256 does not match the catalog (altered or corrupt)")
        return load(data)

    def _save_index(self, index: dict[str, Any] | None = None) -> None:
        """Write ``index`` (default: the current one) atomically."""
        atomic_write_json(self.root / INDEX, self.index if index is None else index)

    # -- checkpoints of finished phases --------------------------------------------------
    def save_checkpoint(
        self, task: str, phase: str, state: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        """Keep a finished phase's output (weights and JSON metadata)."""
        entry = self._write(f"checkpoints/{task}/{phase}.safetensors", state_bytes(state))
        atomic_write_json(self.root / f"checkpoints/{task}/{phase}.json", {**entry, "meta": meta})

    def has_checkpoint(self, task: str, phase: str) -> bool:
        """Whether a checkpoint named ``phase`` of ``task`` is kept."""
        return (self.root / f"checkpoints/{task}/{phase}.json").is_file()

    def drop_checkpoints(self, task: str, prefix: str) -> None:
        """Delete ``task``'s checkpoints whose names start with ``prefix``."""
        folder = self.root / "checkpoints" / task
        for path in sorted(folder.glob(f"{glob.escape(prefix)}*")):
            if path.suffix in {".json", ".safetensors"}:
                path.unlink(missing_ok=True)

    def load_checkpoint(
        self, task: str, phase: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A finished phase's output, checked against its recorded hash."""
        path = self.root / f"checkpoints/{task}/{phase}.json"
        if not path.is_file():
            raise CatalogError(f"{path}: missing")
        entry = json.loads(path.read_text(encoding="utf-8"))
        return self._read(entry), entry["meta"]

    # -- encoder -------------------------------------------------------------------------
    def set_encoder(
        self, encoder: Encoder, preprocessing: Preprocessing, patch: tuple[int, int, int]
    ) -> str:
        """Freeze and store the shared encoder (once, after the first task's base phase)."""
        sha = encoder.freeze().weights_sha256()
        entry = self._write(f"encoder/{sha}.safetensors", state_bytes(encoder.state_dict()))
        self.index["encoder"] = {
            "weights_sha256": sha,
            "config": encoder.config.to_json(),
            **entry,
            "preprocessing": preprocessing.to_json(),
            "patch": list(patch),
        }
        self._save_index()
        return sha

    def encoder(self) -> Encoder | None:
        """The frozen encoder, checked against its file hash and weight hash; None if not yet."""
        entry = self.index.get("encoder")
        if entry is None:
            return None
        encoder = Encoder(EncoderConfig.from_json(entry["config"]))
        encoder.load_state_dict(self._read(entry))
        if encoder.weights_sha256() != entry["weights_sha256"]:
            raise CatalogError(f"{self.root / entry['file']}: encoder weights hash mismatch")
        return encoder.freeze()

    # -- decoders ------------------------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        """Registered tasks in order, each with its versions."""
        return list(self.index["tasks"])

    def has_task(self, name: str) -> bool:
        """Whether a task has a registered decoder."""
        return any(t["name"] == name for t in self.index["tasks"])

    def register(
        self,
        task: str,
        decoder: Decoder,
        metrics: dict[str, Any],
        provenance: dict[str, Any],
        calibration: Calibration | None = None,
    ) -> int:
        """Store a task's decoder as its next version; returns the version number.

        Everything is checked before anything is written; the weights are written (through
        a temporary file) before the index that names them, and removed again if the index
        cannot be written, so the catalog either gains the version or stays as it was.

        Raises:
            RegistrationError: for metrics outside their ranges (Dice in [0, 1], HD95 finite
                and >= 0, whole counts >= 0), scores of structures the decoder lacks, a
                calibration that would not load, a bad task name, or no encoder yet.
        """
        encoder = self.index.get("encoder")
        where = f"{task}: new version"
        problems = task_name_problems(task, where)
        if encoder is None:
            problems.append(f"{where}: the catalog has no encoder yet")
        structures = list(decoder.structures)
        calibration_json = (calibration or Calibration()).to_json()
        problems += metric_problems(metrics, structures, f"{where}: metrics")
        problems += calibration_problems(calibration_json, structures, f"{where}: calibration")
        problems += json_problems(provenance, f"{where}: provenance")
        if problems:
            raise RegistrationError("; ".join(problems))
        index = copy.deepcopy(self.index)
        entry = next((t for t in index["tasks"] if t["name"] == task), None)
        if entry is None:
            entry = {"name": task, "structures": list(structures), "versions": []}
            index["tasks"].append(entry)
        version = len(entry["versions"]) + 1
        data = state_bytes(decoder.state_dict())
        rel = f"decoders/{task}/v{version}.safetensors"
        entry["versions"].append(
            {
                "version": version,
                "file": rel,
                "sha256": _sha256(data),
                "genotype": decoder.genotype.to_json(),
                "structures": structures,
                "metrics": copy.deepcopy(metrics),
                "provenance": copy.deepcopy(provenance),
                "calibration": calibration_json,
                "encoder_sha256": encoder["weights_sha256"],
                "created": _now(),
            }
        )
        folder_existed = (self.root / rel).parent.is_dir()
        self._write(rel, data)
        try:
            self._save_index(index)
        except BaseException:
            if self._index_on_disk() == index:  # written; only its fsync failed: keep both
                self.index = index
            else:  # the old index stands: drop the weights it does not name
                (self.root / rel).unlink(missing_ok=True)
                if not folder_existed:
                    with contextlib.suppress(OSError):
                        (self.root / rel).parent.rmdir()
            raise
        self.index = index
        return version

    def _index_on_disk(self) -> Any:
        try:
            return json.loads((self.root / INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def model(self) -> ContinualSegmenter:
        """The unified model: the encoder and each task's latest decoder, in task order.

        Raises:
            CatalogError: if there is no encoder yet or a file fails its check.
        """
        encoder = self.encoder()
        if encoder is None:
            raise CatalogError(f"{self.root}: no encoder yet")
        model = ContinualSegmenter(encoder)
        for task in self.index["tasks"]:
            latest = task["versions"][-1]
            decoder = Decoder(
                encoder.config.widths, Genotype.from_json(latest["genotype"]), latest["structures"]
            )
            decoder.load_state_dict(self._read(latest))
            model.add_decoder(task["name"], decoder)
        return model.eval()

    def export_bundle(self, folder: str | Path | None = None) -> Path:
        """Write the unified model as a prediction bundle (default ``CATALOG/bundle``)."""
        entry = self.index["encoder"]
        provenance = {
            t["name"]: {**t["versions"][-1]["provenance"], "version": t["versions"][-1]["version"]}
            for t in self.index["tasks"]
        }
        patch = tuple(int(v) for v in entry["patch"])
        bundle = Bundle(
            self.model(),
            Preprocessing.from_json(entry["preprocessing"]),
            (patch[0], patch[1], patch[2]),
            provenance,
            calibration={
                t["name"]: Calibration.from_json(t["versions"][-1].get("calibration"))
                for t in self.index["tasks"]
            },
        )
        return save_bundle(bundle, folder or self.root / "bundle")

    # -- checks --------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Check every hash, metric and range; returns the problems, one line each.

        Checked: the encoder's entry, file hash and weight hash; per task a valid name
        and versions numbered 1, 2, ...; per version its genotype, structures, metrics
        (Dice in [0, 1], HD95 finite >= 0, whole counts >= 0), calibration (skills in
        [0, 1]), encoder, and its file (present, hashing as
        recorded, loading into its decoder); every checkpoint's file and hash.
        """
        tasks = self.index.get("tasks")
        if not isinstance(tasks, list):
            return [f"{self.root / INDEX}: tasks: expected a list"]
        encoder_entry = self.index.get("encoder")
        problems: list[str] = []
        encoder: Encoder | None = None
        if encoder_entry is None:
            if tasks:
                problems.append(f"{self.root / INDEX}: {len(tasks)} task(s) but no encoder")
        elif not isinstance(encoder_entry, dict):
            problems.append(f"{self.root / INDEX}: encoder: expected an object")
        elif not (entry_problems := encoder_entry_problems(encoder_entry, f"{INDEX}: encoder")):
            try:
                encoder = self.encoder()
            except (CatalogError, KeyError, ValueError, RuntimeError) as e:
                problems.append(f"{INDEX}: encoder: {e}")
        else:
            problems += entry_problems
        sha = encoder_entry.get("weights_sha256") if isinstance(encoder_entry, dict) else None
        names: set[str] = set()
        for task in tasks:
            name = task.get("name") if isinstance(task, dict) else None
            where = f"{INDEX}: task {name!r}"
            problems += task_name_problems(name, where)
            if name in names:
                problems.append(f"{where}: registered twice")
            names.add(str(name))
            versions = task.get("versions") if isinstance(task, dict) else None
            if not isinstance(versions, list) or not versions:
                problems.append(f"{where}: expected a non-empty list of versions")
                continue
            for number, version in enumerate(versions, 1):
                version_where = f"{where} v{number}"
                found = version_problems(version, number, sha, version_where)
                problems += found
                if isinstance(version, dict) and "file" in version and "sha256" in version:
                    fit = encoder if not found else None  # rebuild only a sound entry
                    problems += self._decoder_file_problems(version, fit, version_where)
        return problems + self._checkpoint_problems()

    def _decoder_file_problems(
        self, version: dict[str, Any], encoder: Encoder | None, where: str
    ) -> list[str]:
        """The file's problems; with an encoder, also whether it loads into its decoder."""
        try:
            state = self._read(version)
        except CatalogError as e:
            return [f"{where}: {e}"]
        except Exception as e:  # a hashed file that safetensors cannot parse
            return [f"{where}: {version['file']} does not load ({e})"]
        if encoder is None:
            return []
        genotype = Genotype.from_json(version["genotype"])
        decoder = Decoder(encoder.config.widths, genotype, version["structures"])
        try:
            decoder.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[:2]
            return [f"{where}: {version['file']} does not fit its genotype ({' '.join(first)})"]
        return []

    def _checkpoint_problems(self) -> list[str]:
        problems = []
        for path in sorted(self.root.glob("checkpoints/*/*.json")):
            where = str(path.relative_to(self.root))
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                self._read(entry)
            except CatalogError as e:
                problems.append(f"{where}: {e}")
            except Exception as e:  # whatever makes a checkpoint unreadable is a problem
                problems.append(f"{where}: unreadable ({type(e).__name__}: {e})")
        return problems
