import json

import pytest
import torch
from safetensors.torch import load_file

from core.bundle import Bundle, BundleError, load_bundle, save_bundle
from core.data.transforms import Preprocessing
from core.model import Decoder, Genotype
from tests.conftest import TINY, tiny_model


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
