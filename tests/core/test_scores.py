import pytest

from core.scores import ScoreSums, task_mean


def test_a_task_s_mean_skips_structures_no_case_held_and_is_none_when_none_was_scored():
    assert task_mean({"liver": 0.8, "spleen": 0.4, "pancreas": None}) == pytest.approx(0.6)
    assert task_mean({"liver": 0.0, "spleen": 0.4}) == pytest.approx(0.2)  # a 0 counts
    assert task_mean({"liver": None}) is None and task_mean({}) is None


def test_the_mean_of_pooled_sums_is_the_mean_over_cases_of_every_site():
    a, b = ScoreSums(), ScoreSums()
    a.add("dice", "liver", 0.9)
    b.add("dice", "liver", 0.5)
    b.add("dice", "liver", float("nan"))  # absent from that case: skipped
    b.add("dice", "spleen", float("nan"))  # no case held it: no score at all
    means = a.merge(b).means("dice")
    assert means == {"liver": pytest.approx(0.7)}
    table = {s: means.get(s) for s in ("liver", "spleen")}  # as the reports list a task
    assert task_mean(table) == pytest.approx(0.7)
