import tomllib

from server.plan import parse_plan
from simulations.run import plan_document, to_toml
from simulations.scenario import load_scenario


def test_every_scenario_becomes_a_valid_plan():
    for name in ("tiny", "default", "wholebody143"):
        scenario = load_scenario(name)
        doc = plan_document(scenario)
        plan = parse_plan(tomllib.loads(to_toml(doc)), name)
        assert [t.name for t in plan.tasks] == [t.name for t in scenario.tasks]
        for task in plan.tasks:
            assert set(task.sites or ()) == {s.name for s in scenario.sites_of(task.name)}
            assert task.structures == scenario.task(task.name).structures
        assert plan.patch[0] % plan.encoder.divisor == 0
