"""The exported model: one folder with safetensors weights and a JSON manifest.

```
bundle/
  manifest.json               format, version, preprocessing, encoder, decoders (each with
                              its calibration: heads trained, body-part range), merge
  encoder.safetensors
  decoders/<task>.safetensors
```

Every weight file is listed in the manifest with its sha256; loading checks each file's
hash, the encoder's weight hash, and every tensor's name and shape, and never unpickles.
Weight files are written first and the manifest last, each atomically, so a bundle is
either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from core.data.transforms import Preprocessing
from core.io import atomic_write_bytes, atomic_write_json
from core.merge import Calibration, MergeSettings
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype, state_bytes

FORMAT = "continual-segment-fl bundle"
VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class Bundle:
    """A unified model with what prediction needs to use it.

    Attributes:
        model: encoder and decoders.
        preprocessing: how inputs reach the network's space.
        roi_size: sliding-window size for prediction.
        provenance: per task, free-form JSON (sites, rounds, metrics, timestamps).
        calibration: per task, whether its heads were trained and its body-part range
            (a task without one is uncalibrated and never gated).
        merge: how overlapping decoders are merged (``core.merge``).
    """

    model: ContinualSegmenter
    preprocessing: Preprocessing
    roi_size: tuple[int, int, int]
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    merge: MergeSettings = field(default_factory=MergeSettings)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(bundle: Bundle, folder: str | Path) -> Path:
    """Write a bundle folder; returns the manifest's path."""
    folder = Path(folder)
    model = bundle.model
    encoder_bytes = state_bytes(model.encoder.state_dict())
    atomic_write_bytes(folder / "encoder.safetensors", encoder_bytes)
    decoders = []
    for task, decoder in model.items():
        data = state_bytes(decoder.state_dict())
        rel = f"decoders/{task}.safetensors"
        atomic_write_bytes(folder / rel, data)
        decoders.append(
            {
                "task": task,
                "structures": list(decoder.structures),
                "genotype": decoder.genotype.to_json(),
                "file": rel,
                "sha256": _sha256(data),
                "provenance": bundle.provenance.get(task, {}),
                "calibration": bundle.calibration.get(task, Calibration()).to_json(),
            }
        )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "preprocessing": bundle.preprocessing.to_json(),
        "roi_size": list(bundle.roi_size),
        "encoder": {
            "config": model.encoder.config.to_json(),
            "file": "encoder.safetensors",
            "sha256": _sha256(encoder_bytes),
            "weights_sha256": model.encoder.weights_sha256(),
        },
        "decoders": decoders,
        "merge": bundle.merge.to_json(),
    }
    return atomic_write_json(folder / MANIFEST, manifest)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: manifest not found (is {folder} a bundle folder?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"{path}: manifest version {manifest.get('version')!r} is not supported "
            f"(this csfl reads version {VERSION}); upgrade continual-segment-fl"
        )
    return manifest


def _load_state(folder: Path, entry: Mapping[str, Any], module: torch.nn.Module) -> None:
    path = folder / str(entry["file"])
    if not path.is_file():
        raise BundleError(f"{path}: weight file missing")
    data = path.read_bytes()
    if _sha256(data) != entry["sha256"]:
        raise BundleError(f"{path}: sha256 does not match the manifest (altered or corrupt file)")
    try:
        state = load(data)
    except SafetensorError as e:
        raise BundleError(f"{path}: not a readable safetensors file ({e})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path}: tensor names differ: missing {missing[:3]}, extra {unexpected[:3]}"
        )
    for name, tensor in state.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise BundleError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {want}")
    module.load_state_dict(state, strict=True)


def load_bundle(folder: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Load a bundle folder, checking every hash and shape.

    Raises:
        BundleError: for a missing or altered file, an unknown manifest version, or
            weights that do not fit the manifest's architecture.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    try:
        encoder = Encoder(EncoderConfig.from_json(manifest["encoder"]["config"]))
        _load_state(folder, manifest["encoder"], encoder)
        if encoder.weights_sha256() != manifest["encoder"]["weights_sha256"]:
            raise BundleError(f"{folder / 'encoder.safetensors'}: encoder weights hash mismatch")
        model = ContinualSegmenter(encoder.freeze())
        provenance: dict[str, dict[str, Any]] = {}
        calibration: dict[str, Calibration] = {}
        for entry in manifest["decoders"]:
            genotype = Genotype.from_json(entry["genotype"])
            decoder = Decoder(encoder.config.widths, genotype, entry["structures"])
            _load_state(folder, entry, decoder)
            model.add_decoder(entry["task"], decoder)
            provenance[entry["task"]] = dict(entry.get("provenance", {}))
            calibration[entry["task"]] = Calibration.from_json(entry.get("calibration"))
        merge = MergeSettings.from_json(dict(manifest.get("merge", {})))
        prep = Preprocessing.from_json(manifest["preprocessing"])
        roi = tuple(int(v) for v in manifest["roi_size"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{folder / MANIFEST}: malformed manifest ({e!r})") from None
    if len(roi) != 3:
        raise BundleError(f"{folder / MANIFEST}: roi_size must have 3 sides, got {roi}")
    model.to(device).eval()
    return Bundle(model, prep, (roi[0], roi[1], roi[2]), provenance, calibration, merge)
