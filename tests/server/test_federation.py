"""Site descriptions are parsed into bounded records; duplicate names are refused."""

import pytest
from flwr.app import ConfigRecord, RecordDict

from core.records import RecordError
from server.federation import SiteInfo, distinct_sites, parse_description

SHA = "ab" * 32


def _description(**site):
    about = {"name": "hospA", "encoders": [SHA], "datasets": 1} | site
    dataset = {"structures": ["liver", "spleen"], "cases": 4}
    return RecordDict({"site": ConfigRecord(about), "dataset-0": ConfigRecord(dataset)})


def test_a_good_description():
    info = parse_description(7, _description())
    assert (info.node_id, info.name, info.encoders) == (7, "hospA", {SHA})
    assert info.cases_for(("liver",)) == 4 and info.cases_for(("heart",)) == 0
    assert info.cases_for(("liver", "heart")) == 0  # a task it labels only in part
    assert info.cases_for(("liver", "heart"), partial=True) == 4  # ... trained marginally


def test_a_partial_labels_task_is_served_by_sites_that_label_some_of_it():
    from server.orchestrator import match_sites
    from server.plan import parse_plan

    task = {"name": "joint", "structures": ["liver", "heart"], "trim": False, "calibrate": False}
    doc = {"model": {"encoder_widths": [8, 16, 32]}, "tasks": [task]}
    sites = [
        parse_description(1, _description()),
        parse_description(2, _description(name="hospB")),
    ]
    sites[1].datasets = [(("lung_left",), 5)]
    assert match_sites(parse_plan(doc).tasks[0], sites) == []
    partial = parse_plan({**doc, "tasks": [{**task, "partial_labels": True}]}).tasks[0]
    assert [s.name for s in match_sites(partial, sites)] == ["hospA"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (RecordDict(), "no 'site' record"),
        (_description(name="../etc"), "site name"),
        (_description(encoders=["../../x"]), "64 hex digits"),
        (_description(datasets=2), "no 'dataset-1' record"),
        (_description(datasets=10**6), "datasets"),
    ],
)
def test_malformed_descriptions_are_refused(content, match):
    with pytest.raises((RecordError, ValueError), match=match):
        parse_description(1, content)


def test_a_non_integer_case_count_or_unknown_structure_is_refused():
    content = _description()
    content["dataset-0"]["cases"] = 2.5
    with pytest.raises(RecordError, match="whole number"):
        parse_description(1, content)
    content = _description()
    content["dataset-0"]["structures"] = ["livr"]
    with pytest.raises(ValueError, match="livr"):
        parse_description(1, content)


def test_a_site_name_claimed_twice_is_refused_for_both():
    sites = [SiteInfo(1, "hospA", []), SiteInfo(2, "hospB", []), SiteInfo(3, "hospA", [])]
    assert [s.node_id for s in distinct_sites(sites)] == [2]


class _SilentGrid:
    """A grid whose nodes never answer: it returns at once (nodes gone offline)."""

    def send_and_receive(self, messages, timeout):
        return []


def test_a_missing_reply_says_whether_the_node_went_offline_or_the_round_timed_out(monkeypatch):
    from server import federation
    from server.federation import Federation

    monkeypatch.setattr(federation, "Message", lambda *args, **kwargs: (args, kwargs))
    site = SiteInfo(7, "hospB", [(("liver",), 3)])
    offline = Federation(_SilentGrid()).exchange("train", {7: RecordDict()}, [site], "g", 300.0)
    assert offline[0].content is None
    assert offline[0].error.startswith("no reply: the node went offline after 0 s")
    timed = Federation(_SilentGrid()).exchange("train", {7: RecordDict()}, [site], "g", 0.5)
    assert timed[0].error == "no reply before the timeout (0 s)"
