"""The exported model: one folder with safetensors weights and a JSON manifest.

```
bundle/
  manifest.json               format, version, preprocessing, encoder, decoders (each with
                              its calibration: heads trained, validation and peer
                              skills), merge
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from core import anatomy
from core.data.transforms import Preprocessing
from core.describe import SHA256
from core.io import atomic_write_bytes, atomic_write_json, resolve_inside
from core.merge import Calibration, MergeSettings
from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype, state_bytes
from core.model.decoder import DOMAIN_BUFFERS

FORMAT = "continual-segment-fl bundle"
VERSION = 1
MANIFEST = "manifest.json"
# Bounds on what a manifest may ask for, far beyond any real model (nnU-Net: 6 levels,
# widths up to 320); they keep a hostile manifest from sizing anything absurd.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_WEIGHT_FILE_BYTES = 2**30
ENCODER_LEVELS = (2, 8)
MAX_WIDTH = 1024
MAX_DECODERS = 256
ROI_SIDE = (8, 1024)
SPACING_MM = (0.01, 50.0)

_M = TypeVar("_M", bound=torch.nn.Module)


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
        calibration: per task, whether its heads were trained, its validation skill and its
            peer skills (a task without one is uncalibrated; its domain lies in its
            decoder's weights).
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
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES:,} bytes; not a manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e!r})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"{path}: manifest version {manifest.get('version')!r} is not supported "
            f"(this csfl reads version {VERSION}); upgrade continual-segment-fl"
        )
    return manifest


@dataclass(frozen=True)
class _WeightFile:
    """A weight file the manifest names, inside the bundle folder, with its expected hash."""

    path: Path
    sha256: str

    @classmethod
    def from_entry(cls, folder: Path, entry: Mapping[str, Any], where: str) -> _WeightFile:
        file, sha = entry["file"], entry["sha256"]
        if not isinstance(file, str):
            raise ValueError(f"{where}.file: expected a relative path, found {file!r}")
        try:
            path = resolve_inside(folder, file)
        except ValueError as e:
            raise ValueError(f"{where}.file: {e}; expected a file inside the bundle") from None
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise ValueError(f"{where}.sha256: expected 64 hexadecimal digits")
        return cls(path, sha)

    def verified_bytes(self) -> bytes:
        """The file's bytes, once its size is sane and its hash matches the manifest."""
        if not self.path.is_file():
            raise BundleError(f"{self.path}: weight file missing")
        if self.path.stat().st_size > MAX_WEIGHT_FILE_BYTES:
            raise BundleError(f"{self.path}: larger than {MAX_WEIGHT_FILE_BYTES:,} bytes")
        data = self.path.read_bytes()
        if _sha256(data) != self.sha256:
            raise BundleError(
                f"{self.path}: sha256 does not match the manifest (altered or corrupt file)"
            )
        return data


@dataclass(frozen=True)
class _DecoderEntry:
    task: str
    structures: tuple[str, ...]
    genotype: Genotype
    weights: _WeightFile
    provenance: dict[str, Any]
    calibration: Calibration


@dataclass(frozen=True)
class _Plan:
    """A manifest parsed into bounded values: nothing is built or allocated from it yet."""

    config: EncoderConfig
    encoder: _WeightFile
    encoder_weights_sha256: str
    decoders: tuple[_DecoderEntry, ...]
    preprocessing: Preprocessing
    roi: tuple[int, int, int]
    merge: MergeSettings


def _in_range(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, found {value!r}")
    if not lo <= value <= hi:  # also NaN
        raise ValueError(f"{name}: {value} is outside {lo:g}..{hi:g}")
    return value


def _plan(folder: Path, manifest: Mapping[str, Any]) -> _Plan:
    """Check every field the model's size or the weight files depend on, with bounds."""
    encoder = manifest["encoder"]
    widths = encoder["config"]["widths"]
    if not isinstance(widths, list) or not ENCODER_LEVELS[0] <= len(widths) <= ENCODER_LEVELS[1]:
        raise ValueError(f"encoder.config.widths: expected {ENCODER_LEVELS} levels")
    for i, w in enumerate(widths):
        _in_range(f"encoder.config.widths[{i}]", w, 1, MAX_WIDTH)
    channels = encoder["config"].get("in_channels", 1)
    _in_range("encoder.config.in_channels", channels, 1, 1)
    config = EncoderConfig.from_json(encoder["config"])
    weights_sha = encoder["weights_sha256"]
    if not isinstance(weights_sha, str):
        raise ValueError("encoder.weights_sha256: expected a string")
    roi_json = manifest["roi_size"]
    if not isinstance(roi_json, list) or len(roi_json) != 3:
        raise ValueError(f"roi_size: expected 3 sides, found {roi_json!r}")
    roi = tuple(int(_in_range("roi_size", v, *ROI_SIDE)) for v in roi_json)
    if any(side % config.divisor != 0 or side != int(side) for side in roi_json):
        raise ValueError(f"roi_size {roi_json}: each side must be a multiple of {config.divisor}")
    prep_json = manifest["preprocessing"]
    for v in prep_json["spacing_mm"]:
        _in_range("preprocessing.spacing_mm", v, *SPACING_MM)
    for v in prep_json["hu_window"]:
        _in_range("preprocessing.hu_window", v, -1e5, 1e5)
    prep = Preprocessing.from_json(prep_json)
    if len(prep.spacing_mm) != 3 or not prep.hu_window[0] < prep.hu_window[1]:
        raise ValueError("preprocessing: expected 3 spacings and a window lo < hi")
    entries = manifest["decoders"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_DECODERS:
        raise ValueError(f"decoders: expected a list of 1..{MAX_DECODERS}")
    decoders = []
    for i, entry in enumerate(entries):
        structures = entry["structures"]
        if not isinstance(structures, list) or not all(isinstance(n, str) for n in structures):
            raise ValueError(f"decoders[{i}].structures: expected a list of names")
        for name in structures:
            anatomy.get(name)  # at most the vocabulary: the head's size is bounded
        provenance = entry.get("provenance", {})
        if not isinstance(entry["task"], str) or not isinstance(provenance, dict):
            raise ValueError(f"decoders[{i}]: expected a task name and a provenance object")
        decoders.append(
            _DecoderEntry(
                entry["task"],
                tuple(structures),
                Genotype.from_json(entry["genotype"]),
                _WeightFile.from_entry(folder, entry, f"decoders[{i}]"),
                provenance,
                Calibration.from_json(entry.get("calibration")),
            )
        )
    return _Plan(
        config,
        _WeightFile.from_entry(folder, encoder, "encoder"),
        weights_sha,
        tuple(decoders),
        prep,
        (roi[0], roi[1], roi[2]),
        _merge_settings(manifest.get("merge", {})),
    )


def _merge_settings(obj: Any) -> MergeSettings:
    if not isinstance(obj, dict):
        raise ValueError(f"merge: expected an object, found {obj!r}")
    bounds = (
        ("anomaly_weight", 0.0, 1.0),
        ("domain_factor", 1.0, 1e6),
        ("domain_weight", 0.0, 100.0),
    )
    for key, least, most in bounds:
        if key in obj:
            _in_range(f"merge.{key}", obj[key], least, most)
    return MergeSettings.from_json(obj)


def _tensors(weights: _WeightFile, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except SafetensorError as e:
        raise BundleError(f"{weights.path}: not a readable safetensors file ({e})") from None


def _built(weights: _WeightFile, state: Mapping[str, torch.Tensor], build: Callable[[], _M]) -> _M:
    """Build a module once its shapes (taken on the meta device, without memory) fit ``state``.

    A decoder saved before decoders had a domain, or with a domain of another shape, loads
    without one (never silenced).
    """
    with torch.device("meta"):
        expected = build().state_dict()
    missing = sorted(n for n in set(expected) - set(state) if n not in DOMAIN_BUFFERS)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{weights.path}: tensor names differ: missing {missing[:3]}, extra {unexpected[:3]}"
        )
    for name, tensor in state.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want and name not in DOMAIN_BUFFERS:
            raise BundleError(
                f"{weights.path}: {name} has shape {tuple(tensor.shape)}, expected {want}"
            )
    module = build()
    module.load_state_dict(state, strict=True)
    return module


def load_bundle(folder: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Load a bundle folder, checking the manifest's bounds, every hash and every shape.

    In order: the manifest is parsed into bounded values (widths, levels, roi, spacing,
    structures; weight files inside the folder), every weight file's sha256 is checked,
    each file's tensor shapes are compared with the architecture (on the meta device),
    and only then is any model built.

    Raises:
        BundleError: for a malformed or out-of-bounds manifest, a weight path outside the
            folder, a missing or altered file, or weights that do not fit the manifest.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    try:
        plan = _plan(folder, manifest)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise BundleError(f"{folder / MANIFEST}: malformed manifest ({_reason(e)})") from None
    files = (plan.encoder, *(d.weights for d in plan.decoders))
    blobs = [weights.verified_bytes() for weights in files]  # every hash before any model
    states = [_tensors(w, data) for w, data in zip(files, blobs, strict=True)]
    del blobs
    encoder = _built(plan.encoder, states[0], partial(Encoder, plan.config))
    if encoder.weights_sha256() != plan.encoder_weights_sha256:
        raise BundleError(f"{plan.encoder.path}: encoder weights hash mismatch")
    model = ContinualSegmenter(encoder.freeze())
    for entry, state in zip(plan.decoders, states[1:], strict=True):
        build = partial(Decoder, plan.config.widths, entry.genotype, entry.structures)
        try:
            decoder = _built(entry.weights, state, build)
            model.add_decoder(entry.task, decoder)
        except ValueError as e:  # a genotype that does not fit, a repeated task or name
            if isinstance(e, BundleError):
                raise
            raise BundleError(f"{folder / MANIFEST}: decoder {entry.task!r}: {e}") from None
    model.to(device).eval()
    return Bundle(
        model,
        plan.preprocessing,
        plan.roi,
        {d.task: dict(d.provenance) for d in plan.decoders},
        {d.task: d.calibration for d in plan.decoders},
        plan.merge,
    )


def _reason(e: Exception) -> str:
    return f"missing key {e}" if isinstance(e, KeyError) else str(e)
