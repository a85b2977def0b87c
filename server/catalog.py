"""The decoder catalog: the source of truth for what the federation has learnt.

```
CATALOG/
  catalog.json                    index: encoder, tasks and their decoder versions
  journal.jsonl                   append-only phase events (one JSON object per line)
  encoder/<sha256>.safetensors    the frozen encoder, named by its weight hash
  decoders/<task>/v<N>.safetensors
  checkpoints/<task>/<phase>.safetensors + .json   outputs of finished phases
  bundle/                         the unified model exported after each task
```

Every file is written atomically (temporary file, fsync, rename) and its sha256 is
recorded and checked on reading, so a crash at any moment loses at most the phase in
flight: a restart finds the finished phases in the journal and their outputs on disk.
"""

from __future__ import annotations

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

FORMAT = "continual-segment-fl catalog"
VERSION = 1


class CatalogError(RuntimeError):
    """A catalog file that is missing, altered or of an unknown version."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Catalog:
    """A catalog folder; create it empty or open it as a previous run left it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / "catalog.json"
        if index.is_file():
            self.index = json.loads(index.read_text(encoding="utf-8"))
            if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
                raise CatalogError(f"{index}: not a version-{VERSION} {FORMAT}")
        else:
            self.index = {"format": FORMAT, "version": VERSION, "encoder": None, "tasks": []}

    # -- journal -------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        """Where phase events are appended."""
        return self.root / "journal.jsonl"

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

    def phase_done(self, task: str, phase: str) -> bool:
        """Whether a phase of a task has finished (its output is on disk)."""
        return any(
            e["event"] == "phase-end" and e["task"] == task and e.get("phase") == phase
            for e in self.events()
        )

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
        if not path.is_file():
            raise CatalogError(f"{path}: missing")
        data = path.read_bytes()
        if _sha256(data) != entry["sha256"]:
            raise CatalogError(f"{path}: sha256 does not match the catalog (altered or corrupt)")
        return load(data)

    def _save_index(self) -> None:
        atomic_write_json(self.root / "catalog.json", self.index)

    # -- checkpoints of finished phases --------------------------------------------------
    def save_checkpoint(
        self, task: str, phase: str, state: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        """Keep a finished phase's output (weights and JSON metadata)."""
        entry = self._write(f"checkpoints/{task}/{phase}.safetensors", state_bytes(state))
        atomic_write_json(self.root / f"checkpoints/{task}/{phase}.json", {**entry, "meta": meta})

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
        """Store a task's decoder as its next version; returns the version number."""
        entry = next((t for t in self.index["tasks"] if t["name"] == task), None)
        if entry is None:
            entry = {"name": task, "structures": list(decoder.structures), "versions": []}
            self.index["tasks"].append(entry)
        version = len(entry["versions"]) + 1
        stored = self._write(
            f"decoders/{task}/v{version}.safetensors", state_bytes(decoder.state_dict())
        )
        entry["versions"].append(
            {
                "version": version,
                **stored,
                "genotype": decoder.genotype.to_json(),
                "structures": list(decoder.structures),
                "metrics": metrics,
                "provenance": provenance,
                "calibration": (calibration or Calibration()).to_json(),
                "encoder_sha256": self.index["encoder"]["weights_sha256"],
                "created": _now(),
            }
        )
        self._save_index()
        return version

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
