"""Shared fixtures: the tiny scenario's phantoms, and a small model trained on them once.

Their imports happen inside the fixtures: pytest-xdist's controller loads this file too,
and never needs torch or MONAI (about 8 CPU-s).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from core.data import TaskDataset
    from simulations.sites import WrittenSite


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WrittenSite]:
    """The tiny scenario: hospA and hospB (abdomen), hospC (chest), test sets.

    Written once for the whole run: the pytest-xdist workers share it (under a file lock),
    and no test writes into it.
    """
    from filelock import FileLock

    from simulations.run import write_sites_once
    from simulations.scenario import load_scenario
    from simulations.sites import open_written

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "tiny-sites"
    tiny = load_scenario("tiny")
    with FileLock(f"{root}.lock"):
        write_sites_once(tiny, root, lambda _: None)
    return {site.site: site for site in open_written(tiny, root)}


@pytest.fixture(scope="session")
def phantom_dataset(tiny_sites: dict[str, WrittenSite]) -> TaskDataset:
    """hospA's abdominal dataset: 32^3 phantoms with liver, spleen and kidneys labelled."""
    return tiny_sites["hospA"].dataset


@pytest.fixture(scope="session")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_sites: dict[str, WrittenSite]
) -> SimpleNamespace:
    """One model trained on both abdominal sites (200 steps) and scored on the held-out cases.

    ``result`` is the training's ``TrainResult`` (losses, held-out Dice); ``bundle`` the
    folder of the trained model with its encoder frozen.
    """
    from core.bundle import Bundle, save_bundle
    from core.data.transforms import Augmentation
    from core.local.training import LocalTrainSettings, train_phase
    from tests.models import (
        PATCH,
        TRAINED_STEPS,
        abdomen_cases,
        held_out_set,
        native_prep,
        tiny_model,
    )

    dataset = tiny_sites["hospA"].dataset
    held_out = held_out_set(dataset).cases
    # from some initial weights (seed 0 since the calibration head changed the draws) the
    # liver is still unlearnt after 200 steps; seed 1 shows what learning reaches
    model = tiny_model(dataset.labels.structures, seed=1)
    prep = native_prep(dataset)
    # fp32: its figures meet fixed thresholds, so the same arithmetic on every CPU (bf16
    # where the CPU has it moved the anomaly head's margin from above 0.1 to 0.07)
    settings = LocalTrainSettings(
        steps=TRAINED_STEPS,
        augmentation=Augmentation(patch_size=PATCH),
        progress=False,
        precision="fp32",
    )
    result = train_phase(
        model,
        "abdomen",
        dataset.labels,
        abdomen_cases(tiny_sites),
        held_out,
        prep,
        settings,
        train_encoder=True,
    )
    model.encoder.freeze()
    folder = tmp_path_factory.mktemp("bundle")
    save_bundle(Bundle(model, prep, PATCH, {"abdomen": {"sites": ["hospA", "hospB"]}}), folder)
    return SimpleNamespace(result=result, bundle=folder)


@pytest.fixture(scope="session")
def trained_bundle(trained_run: SimpleNamespace) -> Path:
    """The bundle of :func:`trained_run` (its decoder segments at least the liver)."""
    folder: Path = trained_run.bundle
    return folder


BENCHMARKED = ("continual", "naive_merge", "upper_bound", "mib")
"""The quick benchmark's methods: the federated method and its merge ablation, the reference
and one sequential baseline. The report's pipeline is the same for every method; the others
(``no_trim``, a second Flower run of the same code with ``trim = false``; ``joint``,
``finetune``, ``lwf``) are tested on their own."""


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick benchmark of the tiny scenario; its ``continual/`` run is a full simulation.

    That simulation's servers (SuperLink, Simulation Engine) are killed once, right after
    the second stage's teacher phase, and the benchmark is started again, as its user would:
    the second start keeps the first stage and resumes the second from the catalog.
    """
    from server.catalog import Catalog
    from simulations.benchmarks.benchmark import run_benchmark
    from simulations.run import SimulationError
    from simulations.scenario import load_scenario
    from tests.integration.flower import kill_servers, wait_for

    out, tiny, quiet = tmp_path_factory.mktemp("bench"), load_scenario("tiny"), lambda _: None
    catalog = out / "continual" / "catalog"
    with ThreadPoolExecutor(1) as pool:
        # one core: the suite's other workers use the rest (and one Ray actor serves both
        # abdominal sites in turn: one process less that imports torch and MONAI)
        first = pool.submit(run_benchmark, tiny, out, True, ("continual",), quiet, cpus=1)
        wait_for(
            lambda: Catalog(catalog).phase_done("chest", "teacher"), 600, "chest teacher's end"
        )
        kill_servers(under=out / "continual")
        with pytest.raises(SimulationError):
            first.result(timeout=120)
    run_benchmark(tiny, out, quick=True, methods=BENCHMARKED, say=quiet, cpus=1)
    return out


TRAINING_FIXTURES = {"trained_run", "tiny_benchmark"}  # fixturenames lists dependencies too


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the workers share the cores (one torch thread each on 2 cores:
    more threads per worker oversubscribe the machine and run slower).

    They import torch and MONAI one after another: in a fresh environment the first
    compiles their bytecode while the others wait, instead of all compiling the same
    modules at once (``scripts/test.sh`` lets them write it; set-up compiles nothing then).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 0 and "PYTEST_XDIST_WORKER" in os.environ:  # a worker, not the controller
        import importlib
        import sys

        from filelock import FileLock

        with FileLock(Path(sys.prefix) / ".csfl-imports.lock"):
            # torch._dynamo: every process that builds an optimiser imports it
            for name in ("torch", "torch._dynamo", "monai"):
                importlib.import_module(name)
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a trained model or the quick benchmark is slow, whatever it says.

    Under ``--dist loadgroup`` the tests that share such a session fixture run in one
    worker, so it is made once.
    """
    for item in items:
        shared = TRAINING_FIXTURES & set(getattr(item, "fixturenames", ()))
        if shared:
            item.add_marker(pytest.mark.slow)
            group = "tiny_benchmark" if "tiny_benchmark" in shared else "trained_run"
            item.add_marker(pytest.mark.xdist_group(group))
