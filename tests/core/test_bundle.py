import json
import math
import shutil
import tracemalloc

import pytest
import torch
from safetensors.torch import load_file

from core.bundle import Bundle, BundleError, load_bundle, save_bundle
from core.data.transforms import Preprocessing
from core.model import Decoder, Encoder, EncoderConfig, Genotype
from tests.models import TINY, tiny_model


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(("liver", "spleen"))
    model.encoder.freeze()
    model.add_decoder("thorax", Decoder(TINY.widths, Genotype.uniform("p3d", 0.5, 3), ("heart",)))
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 3.0))
    save_bundle(Bundle(model, prep, (32, 32, 32), {"thorax": {"sites": ["hospB"]}}), tmp_path)
    return model, tmp_path


def test_round_trip_gives_the_same_outputs(saved):
    model, folder = saved
    bundle = load_bundle(folder)
    probe = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        want, got = model(probe), bundle.model(probe)
    for task in ("abdomen", "thorax"):
        assert torch.equal(want[task].organ, got[task].organ)
    assert bundle.model.tasks == ["abdomen", "thorax"]
    assert bundle.model.decoder("thorax").genotype == Genotype.uniform("p3d", 0.5, 3)
    assert bundle.preprocessing.spacing_mm == (2.0, 2.0, 3.0)
    assert bundle.roi_size == (32, 32, 32)
    assert bundle.provenance["thorax"] == {"sites": ["hospB"]}
    assert bundle.model.encoder.frozen


def test_manifest_is_plain_json_and_weights_are_safetensors(saved):
    model, folder = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 1
    assert manifest["encoder"]["weights_sha256"] == model.encoder.weights_sha256()
    assert [d["task"] for d in manifest["decoders"]] == ["abdomen", "thorax"]
    assert manifest["decoders"][1]["structures"] == ["heart"]
    state = load_file(folder / manifest["decoders"][0]["file"])
    assert set(state) == set(model.decoder("abdomen").state_dict())


def test_missing_weight_file(saved):
    _, folder = saved
    (folder / "decoders" / "thorax.safetensors").unlink()
    with pytest.raises(BundleError, match=r"thorax\.safetensors: weight file missing"):
        load_bundle(folder)


def test_altered_weight_file(saved):
    _, folder = saved
    path = folder / "encoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder\.safetensors: sha256 does not match"):
        load_bundle(folder)


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_unknown_manifest_version(saved):
    _, folder = saved
    _edit_manifest(folder, lambda m: m.update(version=99))
    with pytest.raises(BundleError, match="manifest version 99 is not supported"):
        load_bundle(folder)


def test_weights_that_do_not_fit_the_genotype(saved):
    _, folder = saved
    _edit_manifest(folder, lambda m: m["decoders"][1]["genotype"]["stages"][0].update(width=1.0))
    with pytest.raises(BundleError, match=r"thorax\.safetensors: .* has shape"):
        load_bundle(folder)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest not found"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(BundleError, match="not a continual-segment-fl bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("../encoder.safetensors", "leads outside"),
        ("/etc/passwd", "is not a relative path"),
        ("linked/encoder.safetensors", "leads outside"),  # a link inside that points outside
    ],
)
def test_weight_files_must_lie_inside_the_bundle(saved, tmp_path_factory, file, match):
    _, folder = saved
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(folder / "encoder.safetensors", elsewhere / "encoder.safetensors")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    _edit_manifest(folder, lambda m: m["decoders"][0].update(file=file))
    with pytest.raises(BundleError, match=rf"decoders\[0\]\.file: .*{match}"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.update(roi_size=[0, 32, 32]), r"roi_size: 0 is outside 8\.\.1024"),
        (lambda m: m.update(roi_size=[36, 32, 32]), "multiple of 8"),
        (lambda m: m.update(roi_size=[32, 32]), "3 sides"),
        (lambda m: m["preprocessing"].update(spacing_mm=[0, 1, 1]), "spacing_mm: 0 is outside"),
        (lambda m: m["preprocessing"].update(spacing_mm=[math.nan, 1, 1]), "nan is outside"),
        (lambda m: m["preprocessing"].update(hu_window=[100, -100]), "low < high"),
        (lambda m: m["encoder"]["config"].update(widths=[4, 8, 6000]), "6000 is outside 1..1024"),
        (lambda m: m["encoder"]["config"].update(widths=[4] * 20), "2, 8"),
        (lambda m: m["encoder"]["config"].update(widths=[4, True]), "expected a number"),
        (lambda m: m["decoders"][0].update(structures=["liver", "nope"]), "nope"),
        (lambda m: m["decoders"][0].update(sha256="abc"), "64 hexadecimal digits"),
        (lambda m: m.update(decoders=[]), "decoders: expected a list of 1..256"),
        (lambda m: m["decoders"][0].pop("genotype"), "missing key 'genotype'"),
        (lambda m: m["merge"].update(anomaly_weight="high"), "merge.anomaly_weight: expected a"),
        (lambda m: m.update(merge=[]), "merge: expected an object"),
    ],
)
def test_manifest_values_are_bounded(saved, change, match):
    _, folder = saved
    _edit_manifest(folder, change)
    with pytest.raises(BundleError, match=rf"manifest\.json: malformed manifest \(.*{match}"):
        load_bundle(folder)


def test_every_hash_is_checked_before_any_model_is_built(saved, monkeypatch):
    _, folder = saved
    path = folder / "decoders" / "thorax.safetensors"  # the last file listed
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    built = []
    monkeypatch.setattr("core.bundle.Encoder", lambda *a: built.append(a))
    monkeypatch.setattr("core.bundle.Decoder", lambda *a: built.append(a))
    with pytest.raises(BundleError, match=r"thorax\.safetensors: sha256 does not match"):
        load_bundle(folder)
    assert built == []


def test_an_oversized_architecture_is_refused_without_allocating_it(saved):
    _, folder = saved
    widths = [8, 16, 1024, 1024]  # in bounds, but not what the weight files hold
    load_bundle(folder)  # what loading imports is not traced below (tens of MB of modules)
    _edit_manifest(folder, lambda m: m["encoder"]["config"].update(widths=widths))
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"encoder\.safetensors: .* has shape"):
            load_bundle(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with torch.device("meta"):  # its size, without allocating it here either
        full = sum(p.numel() * 4 for p in Encoder(EncoderConfig(tuple(widths))).parameters())
    assert peak < full / 10, (peak, full)
