import math

import pytest

from core.phases.evaluate import checked_scores
from core.records import RecordError
from core.scores import ScoreSums

STRUCTURES = ("liver", "spleen")


def _honest():
    sums = ScoreSums()
    for dice, hd in ((0.9, 3.0), (0.7, 5.5)):
        sums.add("dice", "liver", dice)
        sums.add("hd95", "liver", hd)
        sums.add("precision", "liver", dice)
        sums.add("recall", "liver", 1.0)
    sums.add("dice", "spleen", 1.0)
    return sums.to_flat()


def test_an_honest_reply_pools():
    scores = checked_scores(_honest(), STRUCTURES, cases=2, where="A")
    assert scores.means("dice") == {"liver": pytest.approx(0.8), "spleen": 1.0}
    assert scores.means("recall") == {"liver": 1.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dice-sum/liver": 1000.0}, "sum 1000.0 outside"),
        ({"dice-sum/liver": math.nan}, "outside"),
        ({"dice-sum/liver": -0.5}, "outside"),
        ({"hd95-sum/liver": math.inf}, "outside"),
        ({"hd95-sum/liver": -1.0}, "outside"),
        ({"dice-n/liver": 1.5}, "outside"),
        ({"precision-sum/liver": 2.5}, "sum 2.5 outside [0, 1.0 x 2.0]"),
        ({"recall-n/liver": 3.0}, "count 3.0 outside [0, 2]"),
        ({"dice-n/liver": 3.0}, "count 3.0 outside [0, 2]"),
        ({"dice-sum/heart": 0.5}, "not one of the task's structures"),
    ],
)
def test_hostile_evaluate_sums_are_refused(change, expected):
    with pytest.raises(RecordError, match=r"^A\.") as info:
        checked_scores({**_honest(), **change}, STRUCTURES, cases=2, where="A")
    assert expected in str(info.value)
