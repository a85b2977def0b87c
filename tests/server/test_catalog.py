import json

import pytest
import torch

from core.bundle import load_bundle
from core.data.transforms import Preprocessing
from core.model import Decoder, Encoder, Genotype
from server.catalog import Catalog, CatalogError
from tests.conftest import TINY

PREP = Preprocessing((2.0, 2.0, 2.0))


def _filled(root):
    torch.manual_seed(0)
    catalog = Catalog(root)
    sha = catalog.set_encoder(Encoder(TINY), PREP, (32, 32, 32))
    decoder = Decoder(TINY.widths, Genotype.teacher(3), ("liver",))
    catalog.register("abdomen", decoder, {"dice": {"liver": 0.9}}, {"sites": ["hospA"]})
    return catalog, sha, decoder


def test_register_reopen_and_rebuild_the_model(tmp_path):
    catalog, sha, decoder = _filled(tmp_path)
    again = Catalog(tmp_path)
    assert again.has_task("abdomen") and not again.has_task("chest")
    assert again.index["encoder"]["weights_sha256"] == sha
    model = again.model()
    assert model.tasks == ["abdomen"] and model.encoder.frozen
    probe = torch.randn(1, 1, 16, 16, 16)
    original = Encoder(TINY)
    original.load_state_dict(catalog.encoder().state_dict())
    with torch.no_grad():
        expected = decoder.eval()(original.eval()(probe)).organ
        assert torch.equal(model(probe)["abdomen"].organ, expected)
    assert again.register("abdomen", decoder, {}, {}) == 2  # a new version, the old one kept


def test_export_bundle_loads_for_prediction(tmp_path):
    catalog, _, _ = _filled(tmp_path / "cat")
    manifest = catalog.export_bundle()
    bundle = load_bundle(manifest.parent)
    assert bundle.model.tasks == ["abdomen"] and bundle.provenance["abdomen"]["sites"] == ["hospA"]


def test_altered_files_are_detected(tmp_path):
    _, sha, _ = _filled(tmp_path)
    path = tmp_path / "decoders" / "abdomen" / "v1.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CatalogError, match="sha256 does not match"):
        Catalog(tmp_path).model()
    (tmp_path / "encoder" / f"{sha}.safetensors").unlink()
    with pytest.raises(CatalogError, match="missing"):
        Catalog(tmp_path).encoder()


def test_journal_survives_a_torn_last_line_and_records_phases(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.journal("phase-start", "abdomen", phase="base")
    catalog.journal("phase-end", "abdomen", phase="base")
    with open(catalog.journal_path, "a") as f:
        f.write('{"event": "phase-end", "task": "abdo')  # a crash mid-write
    assert catalog.phase_done("abdomen", "base")
    assert not catalog.phase_done("abdomen", "evaluate")
    assert len(catalog.events()) == 2


def test_phase_seconds_add_up_each_task_s_finished_phases(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.journal("run-start", None, sites=["a"])
    catalog.journal("phase-end", "abdomen", phase="base", seconds=2.5)
    catalog.journal("phase-start", "abdomen", phase="search")  # cut off: no time yet
    catalog.journal("phase-end", "abdomen", phase="search", seconds=1.0)  # the resumed run
    catalog.journal("phase-end", "chest", phase="teacher", seconds=4.0)
    assert catalog.phase_seconds() == {"abdomen": 3.5, "chest": 4.0}


def test_checkpoints_round_trip_and_are_checked(tmp_path):
    catalog = Catalog(tmp_path)
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    catalog.save_checkpoint("abdomen", "teacher", state, {"losses": [1.0]})
    loaded, meta = catalog.load_checkpoint("abdomen", "teacher")
    assert torch.equal(loaded["w"], state["w"]) and meta == {"losses": [1.0]}
    meta_path = tmp_path / "checkpoints" / "abdomen" / "teacher.json"
    entry = json.loads(meta_path.read_text())
    entry["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(entry))
    with pytest.raises(CatalogError, match="sha256"):
        catalog.load_checkpoint("abdomen", "teacher")


def test_unknown_catalog_version(tmp_path):
    (tmp_path / "catalog.json").write_text(json.dumps({"format": "x", "version": 9}))
    with pytest.raises(CatalogError, match="not a version-1"):
        Catalog(tmp_path)
