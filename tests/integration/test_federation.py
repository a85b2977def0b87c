"""End to end through Flower's real engines on 127.0.0.1 (slow: about a minute each)."""

import json
import threading

import pytest
import torch

from core.model import Genotype
from server.catalog import Catalog
from server.local import APP_DIR, LocalFederation
from simulations.scenario import load_scenario, write_scenario
from tests.integration.flower import flower_processes, one_task_plan, wait_for

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
    for calibrated, distilled in zip(calibrate_end, distill_end, strict=True):
        for site, sent in calibrated["bytes_up"].items():  # the heads only, in fp16
            assert 0 < sent - distilled["bytes_up"][site] < 20_000
    ranges = {}
    for task in catalog.tasks():  # calibrated heads and the range of the training data
        calibration = task["versions"][0]["calibration"]
        assert calibration["calibrated"] is True
        ranges[task["name"]] = calibration["body_range"]
    assert ranges["abdomen"][0] < ranges["chest"][0] and ranges["abdomen"][1] < ranges["chest"][1]
    manifest = json.loads((run / "catalog" / "bundle" / "manifest.json").read_text())
    assert [d["task"] for d in manifest["decoders"]] == ["abdomen", "chest"]
    assert [d["calibration"]["body_range"] for d in manifest["decoders"]] == list(ranges.values())
    assert json.loads((run / "results.json").read_text())["scenario"] == "tiny"
    assert not flower_processes(under=run)


def test_a_killed_server_resumes_without_redoing_finished_phases(tmp_path):
    scenario = load_scenario("tiny")
    write_scenario(scenario, tmp_path / "sites", cases=2)
    plan = one_task_plan(tmp_path, rounds=1, steps=3, sites=["hospA"], min_sites=1)
    catalog_dir = tmp_path / "catalog"
    config = {
        "plan": str(plan),
        "catalog": str(catalog_dir),
        "sim-sites": "hospA",
        "sim-data-root": str(tmp_path / "sites"),
        "threads": 1,
    }
    sim = {"num-supernodes": 1, "client-resources-num-cpus": 1}
    with LocalFederation(tmp_path / "flower", simulation=True) as federation:
        runner = threading.Thread(target=federation.run, args=(APP_DIR, config, sim), daemon=True)
        runner.start()
        wait_for(lambda: Catalog(catalog_dir).phase_done("abdomen", "base"), 300, "base's end")
        federation.stop(grace=0.0)  # kill the server (SIGKILL) in the middle of the task
        runner.join(timeout=60)
    catalog = Catalog(catalog_dir)
    assert not catalog.has_task("abdomen")
    encoder_sha = catalog.index["encoder"]["weights_sha256"]
    with LocalFederation(tmp_path / "flower2", simulation=True) as federation:
        result = federation.run(APP_DIR, config, sim)
    assert result.returncode == 0, result.stderr[-2000:]
    catalog = Catalog(catalog_dir)
    assert catalog.has_task("abdomen")
    events = catalog.events()
    starts = [e["phase"] for e in events if e["event"] == "phase-start"]
    assert starts.count("base") == 1  # finished before the kill: not redone
    assert (
        starts.count("register") == 1 and catalog.index["encoder"]["weights_sha256"] == encoder_sha
    )
    assert len(catalog.tasks()[0]["versions"]) == 1
    model = catalog.model()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not flower_processes(under=tmp_path)
