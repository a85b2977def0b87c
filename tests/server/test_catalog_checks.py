import pytest

from core.evaluation import ScoreSums
from server.catalog_checks import evaluation_reply_problems, metric_problems

STRUCTURES = ("liver", "spleen")


def _honest():
    sums = ScoreSums()
    for dice, hd in ((0.9, 3.0), (0.7, 5.5)):
        sums.add("dice", "liver", dice)
        sums.add("hd95", "liver", hd)
    sums.add("dice", "spleen", 1.0)
    return {"num-examples": 2, **sums.to_flat()}


def test_an_honest_reply_passes_and_pools_into_registrable_metrics():
    assert evaluation_reply_problems(_honest(), STRUCTURES, max_cases=5) == []
    pooled = ScoreSums.from_flat(_honest()).merge(ScoreSums.from_flat(_honest()))
    metrics = {"dice": pooled.means("dice"), "hd95": pooled.means("hd95"), "validation_cases": 4}
    assert metric_problems(metrics, STRUCTURES) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dice-sum/liver": 1000.0}, "= 1000.0, expected [0, 2]"),
        ({"dice-sum/liver": float("nan")}, "expected a finite number"),
        ({"dice-sum/liver": -0.5}, "expected [0, 2]"),
        ({"hd95-sum/liver": float("inf")}, "expected a finite number"),
        ({"hd95-sum/liver": -1.0}, "expected >= 0"),
        ({"dice-n/liver": 1.5}, "expected a whole number <= 2"),
        ({"dice-n/liver": 3.0}, "expected a whole number <= 2"),
        ({"dice-sum/heart": 0.5}, "not a score of this decoder"),
        ({"loss-sum/liver": 0.5}, "not a score of this decoder"),
        ({"num-examples": 10**9}, "num-examples"),
        ({"num-examples": -1}, "num-examples"),
    ],
)
def test_hostile_evaluate_replies_are_named(change, expected):
    problems = evaluation_reply_problems({**_honest(), **change}, STRUCTURES, max_cases=5)
    assert problems and expected in problems[0]


def test_a_count_without_its_sum_is_a_problem():
    flat = {k: v for k, v in _honest().items() if k != "dice-sum/spleen"}
    assert "must come together" in evaluation_reply_problems(flat, STRUCTURES, max_cases=5)[0]
