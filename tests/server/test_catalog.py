import json
import re

import pytest
import torch

from core.bundle import load_bundle
from core.data.transforms import Preprocessing
from core.io import atomic_write_json
from core.merge import Calibration
from core.model import Decoder, Encoder, Genotype
from server.catalog import Catalog, CatalogError, RegistrationError
from tests.models import TINY

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


def _snapshot(root):
    """Every file's bytes and every folder under the catalog."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


BAD_METRICS = {
    "dice 1000": {"dice": {"liver": 1000.0}},
    "dice NaN": {"dice": {"liver": float("nan")}},
    "dice negative": {"dice": {"liver": -0.1}},
    "dice text": {"dice": {"liver": "0.9"}},
    "hd95 inf": {"hd95": {"liver": float("inf")}},
    "hd95 negative": {"hd95": {"liver": -1.0}},
    "unknown structure": {"dice": {"spleen": 0.5}},
    "scores not a table": {"dice": [0.5]},
    "count negative": {"validation_cases": -1},
    "count fractional": {"validation_cases": 2.5},
    "count boolean": {"validation_cases": True},
}


@pytest.mark.parametrize("case", list(BAD_METRICS))
def test_bad_metrics_are_refused_and_change_nothing(tmp_path, case):
    catalog, _, decoder = _filled(tmp_path)
    before, index = _snapshot(tmp_path), json.loads(json.dumps(catalog.index))
    with pytest.raises(RegistrationError, match="metrics"):
        catalog.register("abdomen", decoder, BAD_METRICS[case], {"sites": ["evil"]})
    with pytest.raises(RegistrationError):
        catalog.register("chest", decoder, BAD_METRICS[case], {})
    assert _snapshot(tmp_path) == before and catalog.index == index
    catalog.export_bundle()  # a refused reply never breaks a later export ...
    assert catalog.register("abdomen", decoder, {"dice": {"liver": None}}, {}) == 2  # ... or entry
    assert catalog.verify() == []


def test_bad_calibration_and_provenance_are_refused(tmp_path):
    catalog, _, decoder = _filled(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(RegistrationError, match="calibration skill"):
        catalog.register("abdomen", decoder, {}, {}, Calibration(skill={"liver": 1000.0}))
    for peers, problem in (
        ({"chest": {"brain": 0.5}}, "peers.chest: structure 'brain' is not one of"),
        ({"../x": {"liver": 0.5}}, "peers: task name"),
        ({"chest": {"liver": float("nan")}}, "calibration peers.chest"),
    ):
        with pytest.raises(RegistrationError, match=re.escape(problem)):
            catalog.register("abdomen", decoder, {}, {}, Calibration(peers=peers))
    with pytest.raises(RegistrationError, match="provenance"):
        catalog.register("abdomen", decoder, {}, {"bytes_up": {"a": float("nan")}})
    with pytest.raises(RegistrationError, match="task name"):
        catalog.register("../escape", decoder, {}, {})
    assert _snapshot(tmp_path) == before


def test_registration_without_an_encoder_is_refused(tmp_path):
    decoder = Decoder(TINY.widths, Genotype.teacher(3), ("liver",))
    with pytest.raises(RegistrationError, match="no encoder"):
        Catalog(tmp_path).register("abdomen", decoder, {}, {})
    assert not (tmp_path / "catalog.json").exists()


def test_a_failed_index_write_leaves_no_weights_behind(tmp_path, monkeypatch):
    catalog, _, decoder = _filled(tmp_path)
    before = _snapshot(tmp_path)

    def disk_full(path, obj):
        raise OSError("no space left on device")

    monkeypatch.setattr("server.catalog.atomic_write_json", disk_full)
    for task in ("abdomen", "chest"):
        with pytest.raises(OSError, match="no space"):
            catalog.register(task, decoder, {}, {})
    assert _snapshot(tmp_path) == before and len(catalog.tasks()) == 1


def test_an_index_written_before_its_fsync_failed_is_kept(tmp_path, monkeypatch):
    catalog, _, decoder = _filled(tmp_path)
    write = atomic_write_json

    def fsync_fails(path, obj):
        write(path, obj)
        raise OSError("fsync failed")

    monkeypatch.setattr("server.catalog.atomic_write_json", fsync_fails)
    with pytest.raises(OSError, match="fsync"):
        catalog.register("chest", decoder, {}, {})
    assert catalog.has_task("chest") and Catalog(tmp_path).has_task("chest")
    assert catalog.verify() == []


def test_verify_lists_every_problem_of_an_altered_catalog(tmp_path):
    catalog, _, decoder = _filled(tmp_path)
    catalog.register("chest", decoder, {}, {})
    catalog.save_checkpoint("chest", "teacher", {"w": torch.zeros(2)}, {})
    assert catalog.verify() == []
    index = json.loads((tmp_path / "catalog.json").read_text())
    first, second = index["tasks"][0]["versions"][0], index["tasks"][1]["versions"][0]
    first["metrics"] = {"dice": {"liver": 1000.0}, "hd95": {"liver": -3.0}, "cases": -2}
    first["calibration"] = {"calibrated": True, "skill": {"liver": 1.5}}
    first["genotype"] = {"stages": [{"op": "bogus"}]}
    second["structures"] = ["not_an_organ"]
    second["file"] = "../outside.safetensors"
    (tmp_path / "catalog.json").write_text(json.dumps(index))
    (tmp_path / "checkpoints" / "chest" / "teacher.safetensors").write_bytes(b"altered")
    problems = Catalog(tmp_path).verify()
    text = "\n".join(problems)
    for expected in (
        "metrics.dice['liver'] = 1000.0, expected a Dice value in [0, 1]",
        "metrics.hd95['liver'] = -3.0, expected a distance >= 0 mm",
        "metrics.cases = -2, expected a count",
        "calibration skill {'liver': 1.5}: expected Dice values in [0, 1]",
        "op 'bogus'",
        "'not_an_organ' is not in the anatomy vocabulary",
        "outside.safetensors: outside the catalog folder",
        "checkpoints/chest/teacher.json",
    ):
        assert expected in text, expected
    assert len(problems) == 8


def test_verify_finds_altered_and_misfit_weight_files(tmp_path):
    catalog, _, _ = _filled(tmp_path)
    other = Decoder(TINY.widths, Genotype.uniform("2d", 0.5, 3), ("liver",))
    catalog.register("chest", other, {}, {})
    index = json.loads((tmp_path / "catalog.json").read_text())
    index["tasks"][1]["versions"][0]["genotype"] = Genotype.teacher(3).to_json()
    (tmp_path / "catalog.json").write_text(json.dumps(index))
    (tmp_path / "decoders" / "abdomen" / "v1.safetensors").write_bytes(b"altered")
    problems = Catalog(tmp_path).verify()
    assert len(problems) == 2
    assert "sha256 does not match" in problems[0] and "does not fit its genotype" in problems[1]
