"""Every run ends with each task's outcome, and does not complete when it fell short."""

import pytest

from server import orchestrator
from server.federation import SiteInfo
from server.orchestrator import IncompleteRunError, NoSiteError, Orchestrator, last_run_summary
from server.plan import parse_plan
from server.steps import Registration
from simulations.scenario import load_scenario


class FakeCatalog:
    """What the orchestrator reads and writes of a catalog."""

    def __init__(self, tasks=None):
        self.registered = dict(tasks or {})  # task -> sites
        self.events = []

    def journal(self, event, task=None, **data):
        self.events.append({"event": event, "task": task, **data})

    def has_task(self, name):
        return name in self.registered

    def encoder(self):
        return object() if self.registered else None

    def tasks(self):
        return [
            {"name": n, "versions": [{"provenance": {"sites": list(s)}}]}
            for n, s in self.registered.items()
        ]


class FakeFederation:
    def __init__(self, sites):
        self.sites = sites

    def describe_sites(self):
        return self.sites


def _site(name, node, structures):
    return SiteInfo(node, name, [(tuple(structures), 4)])


def _plan(partial_runs=False, **abdomen):
    doc = load_scenario("tiny").plan.document()
    doc["training"]["partial_runs"] = partial_runs
    doc["tasks"][0].update(abdomen)
    return parse_plan(doc)


@pytest.fixture
def training(monkeypatch):
    """Tasks 'train' at once: the sites in ``dropped[task]`` leave, ``failing`` raise."""
    dropped, failing = {}, set()

    class FakeRun:
        def __init__(self, plan, task, catalog, federation, sites):
            self.task, self.catalog = task, catalog
            self.sites = [s.name for s in sites if s.name not in dropped.get(task.name, ())]

        def run(self, step, state):
            if self.task.name in failing:
                raise RuntimeError("every site left the round")
            if isinstance(step, Registration):
                self.catalog.registered[self.task.name] = self.sites
            return state

    monkeypatch.setattr(orchestrator, "TaskRun", FakeRun)
    monkeypatch.setattr(orchestrator, "Encoder", lambda config: object())
    monkeypatch.setattr(orchestrator, "initial_decoder", lambda plan, task: object())
    return dropped, failing


ABDOMEN = ("liver", "spleen", "kidney_left", "kidney_right")


def _sites(*names, chest=False):
    sites = [_site(n, i, ABDOMEN) for i, n in enumerate(names, 1)]
    if chest:
        sites.append(_site("hospC", 9, load_scenario("tiny").tasks[1].structures))
    return sites


def _summary(catalog):
    (end,) = [e for e in catalog.events if e["event"] == "run-end"]
    return end


def test_a_run_that_trains_every_task_with_its_sites_completes(training):
    catalog = FakeCatalog()
    sites = _sites("hospA", "hospB", chest=True)
    done = Orchestrator(_plan(), catalog, FakeFederation(sites)).run()
    assert done == ["abdomen", "chest"]
    summary = _summary(catalog)["summary"]
    assert summary["abdomen"] == {
        "status": "trained",
        "sites": ["hospA", "hospB"],
        "planned": ["hospA", "hospB"],
        "reason": "",
    }
    assert summary["chest"]["status"] == "trained" and "error" not in _summary(catalog)


def test_a_skipped_task_makes_the_run_incomplete_unless_the_plan_allows_it(training):
    sites = _sites("hospA", "hospB")  # no chest site
    catalog = FakeCatalog()
    with pytest.raises(IncompleteRunError, match=r"chest: skipped.*0 site\(s\) present, needs 1"):
        Orchestrator(_plan(), catalog, FakeFederation(sites)).run()
    assert catalog.registered["abdomen"] == ["hospA", "hospB"]  # what was trained is kept
    assert _summary(catalog)["summary"]["chest"]["status"] == "skipped"
    allowed = FakeCatalog()
    assert Orchestrator(_plan(True), allowed, FakeFederation(sites)).run() == ["abdomen"]
    assert "error" not in _summary(allowed)
    lines = last_run_summary(allowed.events)
    assert [line.split(":")[0] for line in lines] == ["abdomen", "chest"]
    assert last_run_summary(allowed.events, ["abdomen"]) == lines[:1]  # a stage's own tasks


def test_a_task_trained_without_a_named_site_is_partial(training):
    dropped, _ = training
    dropped["abdomen"] = {"hospB"}
    catalog = FakeCatalog()
    sites = _sites("hospA", "hospB", chest=True)
    with pytest.raises(IncompleteRunError, match="abdomen: partial, by hospA"):
        Orchestrator(_plan(), catalog, FakeFederation(sites)).run()
    outcome = _summary(catalog)["summary"]["abdomen"]
    assert outcome["status"] == "partial" and outcome["reason"] == "without hospB"


def test_a_failed_task_stops_the_run_even_where_partial_runs_are_allowed(training):
    _, failing = training
    failing.add("abdomen")
    catalog = FakeCatalog()
    sites = _sites("hospA", "hospB", chest=True)
    with pytest.raises(IncompleteRunError, match=r"abdomen: failed.*every site left"):
        Orchestrator(_plan(True), catalog, FakeFederation(sites)).run()
    summary = _summary(catalog)["summary"]
    assert summary["chest"] == {
        "status": "skipped",
        "sites": [],
        "planned": [],
        "reason": "not started: abdomen failed",
    }


def test_tasks_already_in_the_catalog_are_kept_and_nothing_to_do_completes(training):
    catalog = FakeCatalog({"abdomen": ["hospA"], "chest": ["hospC"]})
    assert Orchestrator(_plan(), catalog, FakeFederation([])).run() == []
    assert {o["status"] for o in _summary(catalog)["summary"].values()} == {"kept"}


def test_no_serving_site_at_all_is_its_own_error(training):
    with pytest.raises(NoSiteError, match="no connected site serves any unfinished task"):
        Orchestrator(_plan(), FakeCatalog(), FakeFederation([])).run()
