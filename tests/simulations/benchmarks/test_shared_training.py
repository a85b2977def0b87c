"""``no_trim`` starts from ``continual``'s training phases (a hand-made catalog; and a real run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.model import Encoder
from server.catalog import Catalog
from server.plan import Plan
from simulations.benchmarks.budget import untrimmed
from simulations.benchmarks.shared_training import adopt_training
from simulations.run import PLAN, to_toml
from simulations.scenario import load_scenario, with_federation


def _continual_run(folder: Path, plan: Plan, trained: int) -> Catalog:
    """A run folder whose catalog finished the training phase of its first ``trained`` tasks."""
    folder.mkdir(parents=True)
    (folder / PLAN).write_text(to_toml(plan.document()))
    catalog = Catalog(folder / "catalog")
    torch.manual_seed(0)
    catalog.set_encoder(Encoder(plan.encoder), plan.preprocessing, plan.patch)
    for index, task in enumerate(plan.tasks[:trained]):
        phase = "base" if index == 0 else "teacher"
        catalog.save_checkpoint(task.name, phase, {"decoder.w": torch.full((2,), index)}, {})
        catalog.journal("phase-start", task.name, phase=phase)
        catalog.journal("phase-end", task.name, phase=phase, seconds=10.0 + index)
        catalog.journal("phase-end", task.name, phase="search", seconds=1.0)
    return catalog


@pytest.fixture
def plan() -> Plan:
    return load_scenario("tiny").plan


def test_the_training_phases_are_copied_with_encoder_and_journal(tmp_path: Path, plan: Plan):
    theirs = _continual_run(tmp_path / "continual", plan, trained=len(plan.tasks))
    said: list[str] = []
    copied = adopt_training(
        tmp_path / "continual", tmp_path / "no_trim", untrimmed(plan), said.append
    )
    assert copied == len(plan.tasks) and "training phases of 2 task(s)" in said[0]
    ours = Catalog(tmp_path / "no_trim" / "catalog")
    assert ours.index["encoder"]["weights_sha256"] == theirs.index["encoder"]["weights_sha256"]
    for index, task in enumerate(plan.tasks):
        phase = "base" if index == 0 else "teacher"
        assert ours.phase_done(task.name, phase) and not ours.phase_done(task.name, "search")
        state, _ = ours.load_checkpoint(task.name, phase)
        assert torch.equal(state["decoder.w"], torch.full((2,), index))
    ends = [e for e in ours.events() if e["event"] == "phase-end"]
    assert [e["seconds"] for e in ends] == [10.0, 11.0]  # the training time still counts
    assert all(e["copied_from"] == str(theirs.root) for e in ends)
    assert ours.phase_seconds() == {plan.tasks[0].name: 10.0, plan.tasks[1].name: 11.0}


def test_only_the_finished_tasks_in_order_are_copied(tmp_path: Path, plan: Plan):
    _continual_run(tmp_path / "continual", plan, trained=1)
    assert adopt_training(tmp_path / "continual", tmp_path / "no_trim", untrimmed(plan), print) == 1
    ours = Catalog(tmp_path / "no_trim" / "catalog")
    assert not ours.phase_done(plan.tasks[1].name, "teacher")


def test_nothing_is_copied_from_another_plan_into_a_used_catalog_or_without_a_run(
    tmp_path: Path, plan: Plan
):
    _continual_run(tmp_path / "continual", plan, trained=len(plan.tasks))
    other = with_federation(load_scenario("tiny"), {"lr": 0.5}).plan
    assert adopt_training(tmp_path / "continual", tmp_path / "a", untrimmed(other), print) == 0
    assert adopt_training(tmp_path / "continual", tmp_path / "b", plan, print) == 0  # trimmed
    Catalog(tmp_path / "c" / "catalog").journal("run-start", sites=[])
    assert adopt_training(tmp_path / "continual", tmp_path / "c", untrimmed(plan), print) == 0
    assert adopt_training(tmp_path / "nowhere", tmp_path / "d", untrimmed(plan), print) == 0
    for folder in "abd":
        assert Catalog(tmp_path / folder / "catalog").events() == []


@pytest.mark.slow  # a Flower run of the tiny scenario, resumed from the copied phases
def test_no_trim_trains_nothing_that_continual_trained(tiny_benchmark: Path, tmp_path: Path):
    from simulations.benchmarks.benchmark import run_benchmark

    out = tmp_path / "bench"
    shutil.copytree(tiny_benchmark / "continual", out / "continual", symlinks=True)
    said: list[str] = []
    tiny = load_scenario("tiny")
    run_benchmark(tiny, out, quick=True, methods=("no_trim",), say=said.append, cpus=1)
    assert any("starts from the training phases of 2 task(s)" in s for s in said)
    events = Catalog(out / "no_trim" / "catalog").events()
    started = {(e["task"], e["phase"]) for e in events if e["event"] == "phase-start"}
    assert not {p for _, p in started} & {"base", "teacher", "search", "distill"}
    assert ("abdomen", "evaluate") in started and ("chest", "evaluate") in started
    result = json.loads((out / "no_trim.json").read_text())
    trained = [  # continual's training phases: their time counts for no_trim too
        e["seconds"]
        for e in Catalog(out / "continual" / "catalog").events()
        if e["event"] == "phase-end" and e["phase"] in ("base", "teacher")
    ]
    assert len(trained) == 2 and result["train_seconds"] > sum(trained)
    assert all(v is not None for v in result["stages"][-1]["abdomen"]["dice"].values())
