import pytest

from core.data import split_cases
from simulations.scenario import ScenarioError, load_scenario
from simulations.task_data import TaskData, load_tasks, load_test_set


def test_a_task_s_folder_is_named_from_its_place_in_the_scenario():
    tiny = load_scenario("tiny")
    assert tiny.dataset_folder("abdomen") == "Dataset001_abdomen"
    assert tiny.dataset_folder("chest") == "Dataset002_chest"
    with pytest.raises(ScenarioError, match="no task 'liver'"):
        tiny.dataset_folder("liver")


def test_tasks_are_read_where_the_scenario_wrote_them(tiny_sites):
    tiny = load_scenario("tiny")
    sites = tiny_sites["hospA"].dataset.root.parent.parent
    abdomen, chest = load_tasks(tiny, sites, 0.34, 0)
    assert (abdomen.name, chest.name) == ("abdomen", "chest")
    expected = [
        c
        for site in ("hospA", "hospB")
        for c in split_cases(tiny_sites[site].dataset.cases, 0.34, 0)[0]
    ]
    assert abdomen.train_cases == expected  # each site's training split, pooled in site order
    assert len(abdomen.test_cases) == tiny.task("abdomen").test_cases
    assert all(c.image.parent.parent.name == "Dataset001_abdomen" for c in abdomen.test_cases)
    assert chest.structures == ("heart", "lung_left", "lung_right")
    test_only = load_test_set(tiny, sites / "test", "chest")
    assert test_only.test_cases == chest.test_cases and test_only.train_cases == []


def test_a_task_s_tables_must_label_its_structures(tiny_sites):
    table = tiny_sites["hospC"].dataset.labels  # chest: no liver
    with pytest.raises(ValueError, match=r"the training labels lack \['liver'\]"):
        TaskData("abdomen", ("liver",), table, [], [], table)
