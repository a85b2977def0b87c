"""End to end through Flower's Simulation Engine on 127.0.0.1: the quick benchmark's run (slow)."""

import json

import pytest
import torch

from core.bundle import load_bundle
from core.domain import CENTROID_WIDTH, SITE_CENTROIDS, VIEWS
from core.model import Genotype
from server.catalog import Catalog
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
        assert task["versions"][0]["calibration"]["calibrated"] is True
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
