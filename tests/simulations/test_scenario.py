"""Scenario files and their federation tables."""

from simulations.scenario import load_scenario, with_federation


def test_a_federation_seed_reseeds_the_training_alone() -> None:
    tiny = load_scenario("tiny")
    again = with_federation(tiny, {"seed": 3})
    assert again.plan.training.seed == 3 and tiny.plan.training.seed == tiny.seed
    assert again.seed == tiny.seed  # the phantoms stay the same
