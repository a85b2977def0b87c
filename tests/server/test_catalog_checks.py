from core.scores import ScoreSums
from server.catalog_checks import metric_problems

STRUCTURES = ("liver", "spleen")


def test_pooled_honest_metrics_are_registrable():
    sums = ScoreSums()
    for dice, hd in ((0.9, 3.0), (0.7, 5.5)):
        sums.add("dice", "liver", dice)
        sums.add("hd95", "liver", hd)
    metrics = {"dice": sums.means("dice"), "hd95": sums.means("hd95"), "validation_cases": 4}
    assert metric_problems(metrics, STRUCTURES) == []
