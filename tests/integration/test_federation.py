"""End to end through Flower's Simulation Engine on 127.0.0.1: the quick benchmark's run (slow)."""

import json

import pytest
import torch

from client.app import PATH
from core.bundle import load_bundle
from core.describe import DESCRIBE
from core.domain import CENTROID_WIDTH, SITE_CENTROIDS, VIEWS
from core.model import Genotype
from core.phases import PHASES
from core.protocol import ENCODER_SHA
from server.catalog import Catalog
from server.wire import RECEIVED, SENT, read_wire_log
from simulations.run import WIRE_LOG
from tests.integration.flower import flower_processes

pytestmark = pytest.mark.slow


def test_tiny_scenario_two_stages_through_the_simulation_engine(tiny_benchmark):
    run = tiny_benchmark / "continual"  # the benchmark's run of this method is a simulation
    first, second = json.loads((run / "results.json").read_text())["stages"]
    assert first["tasks"] == ["abdomen"] and second["tasks"] == ["chest"]
    assert set(second["dice"]) == {"abdomen", "chest"}
    for structure, scores in first["dice"]["abdomen"].items():  # continual: nothing forgotten
        assert second["dice"]["abdomen"][structure]["decoder"] == scores["decoder"]
    catalog = Catalog(run / "catalog")
    assert [t["name"] for t in catalog.tasks()] == ["abdomen", "chest"]
    chest = catalog.tasks()[1]["versions"][0]["provenance"]
    assert chest["sites"] == ["hospC"] and chest["bytes_up"]["hospC"] > 0
    for task in catalog.tasks():  # only trimmed students enter the catalog
        search = catalog.load_checkpoint(task["name"], "search")[1]
        assert search["parameters"] <= search["budget"]
        assert (
            task["versions"][0]["genotype"] == search["genotype"] != Genotype.teacher(3).to_json()
        )
    search_end = next(
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "search"
    )
    teacher_end = next(
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "base"
    )
    for site, sent in search_end["bytes_up"].items():  # the search uploads alpha and beta only
        assert sent - teacher_end["bytes_up"][site] < 2000
    calibrate_end = [
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "calibrate"
    ]
    distill_end = [
        e for e in catalog.events() if e["event"] == "phase-end" and e.get("phase") == "distill"
    ]
    for calibrated, distilled, task in zip(
        calibrate_end, distill_end, catalog.tasks(), strict=True
    ):
        rows = 1 + len(task["structures"])  # the domain: fp32 centroids and thresholds
        domain = 4 * rows * (SITE_CENTROIDS * CENTROID_WIDTH + len(VIEWS))
        for site, sent in calibrated["bytes_up"].items():  # and the heads, in fp16
            assert domain < sent - distilled["bytes_up"][site] < domain + 20_000
    for task in catalog.tasks():
        version = task["versions"][0]
        assert version["calibration"]["calibrated"] is True
        dice = {s: v for s, v in version["metrics"]["dice"].items() if v is not None}
        assert version["calibration"]["skill"] == pytest.approx(dice, abs=1e-4)  # the merge's
        assert set(version["metrics"]["recall"]) <= set(task["structures"])  # sites send it
    manifest = json.loads((run / "catalog" / "bundle" / "manifest.json").read_text())
    assert [d["task"] for d in manifest["decoders"]] == ["abdomen", "chest"]
    model = load_bundle(run / "catalog" / "bundle").model  # each decoder knows its domain
    abdomen, chest = model.decoder("abdomen"), model.decoder("chest")
    assert abdomen.has_domain and chest.has_domain
    assert not torch.equal(abdomen.domain_centroids, chest.domain_centroids)
    assert json.loads((run / "results.json").read_text())["scenario"] == "tiny"
    assert not flower_processes(under=run)


def test_a_killed_server_resumes_without_redoing_finished_phases(tiny_benchmark):
    catalog = Catalog(tiny_benchmark / "continual" / "catalog")  # killed after chest/teacher
    starts = [(e["task"], e["phase"]) for e in catalog.events() if e["event"] == "phase-start"]
    assert starts.count(("chest", "teacher")) == 1  # finished before the kill: not redone
    assert ("chest", "search") in starts
    for task in catalog.tasks():
        assert starts.count((task["name"], "register")) == 1 and len(task["versions"]) == 1
    encoders = list((catalog.root / "encoder").iterdir())  # files named by their weights' hash
    assert [p.stem for p in encoders] == [catalog.index["encoder"]["weights_sha256"]]
    runs = [e["event"] for e in catalog.events() if e["event"] in ("run-start", "run-end")]
    # stage 1; stage 2 cut short; stage 2 resumed (the second start kept stage 1)
    assert runs == ["run-start", "run-end", "run-start", "run-start", "run-end"]
    assert all(torch.isfinite(p).all() for p in catalog.model().parameters())


def _site_private_names(sites):
    """What only a site knows: its data root, its datasets' folders and its case identifiers."""
    root = sites.resolve()
    names = {str(root)}
    for dataset in root.glob("*/Dataset*"):
        names.add(dataset.name)
        names |= {p.name.split("_0000")[0] for p in (dataset / "imagesTr").glob("*.nii.gz")}
    return names


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _strings(item)


def test_only_weights_architecture_and_bounded_aggregates_cross_the_wire(tiny_benchmark):
    """Every message of a real run, both ways: no image-shaped array, no path, no case."""
    run = tiny_benchmark / "continual"
    log = read_wire_log(run / WIRE_LOG)
    assert {m["direction"] for m in log} == {SENT, RECEIVED}
    every_type = {DESCRIBE, *(p.message_type for p in PHASES.values())}
    assert {m["type"] for m in log if m["direction"] == RECEIVED} == every_type
    private = _site_private_names(run / "sites")
    assert len(private) > 10  # the data root, 3 datasets and their cases
    for m in log:
        assert "error" not in m, m  # nothing failed in this run
        for name, record in m.get("content", {}).items():
            where = (m["direction"], m["type"], m["site"], name)
            for key, array in record.get("arrays", {}).items():
                assert sum(side >= 8 for side in array["shape"]) < 3, (where, key, array)
            if m["direction"] == RECEIVED:  # from a site: numbers, or its description
                metrics = record.get("metrics", {})
                assert all(isinstance(v, int | float) for v in metrics.values()), where
                config = record.get("config", {})
                if m["type"] != DESCRIBE:  # a reply names only the encoder it worked on
                    assert set(config) <= {ENCODER_SHA}, where
            for text in [*_strings(record), *(k for r in record.values() for k in r)]:
                assert not any(p in text for p in private), (where, text)
                assert not PATH.search(text), (where, text)  # no path of any machine
