import json

from simulations.progress import JournalWatcher


def _append(path, *events):
    with path.open("a") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")


def test_the_watcher_prints_each_new_event_once_with_an_estimate(tmp_path):
    journal = tmp_path / "journal.jsonl"
    _append(journal, {"event": "phase-end", "task": "old", "phase": "base", "seconds": 3})
    lines: list[str] = []
    watch = JournalWatcher(journal, planned_rounds=4, say=lines.append)
    watch()
    assert lines == []  # events from before the stage are not repeated
    _append(
        journal,
        {"event": "phase-start", "task": "abdomen", "phase": "base", "sites": ["A", "B"]},
        {
            "event": "round-end",
            "task": "abdomen",
            "phase": "base",
            "round": 1,
            "rounds": 2,
            "sites": ["A"],
            "rejected": ["B"],
            "loss": 0.5,
        },
    )
    with journal.open("a") as f:
        f.write('{"event": "round-e')  # half-written: waits for the rest
    watch()
    assert lines[0] == "  abdomen/base: started at A, B"
    assert lines[1].startswith(
        "  abdomen/base round 1/2: 1 site(s) replied, rejected B, loss 0.500"
    )
    assert "left]" in lines[1] and len(lines) == 2
    with journal.open("a") as f:
        f.write('nd", "task": "abdomen", "phase": "base", "round": 2, "rounds": 2, "sites": []}\n')
    _append(
        journal,
        {
            "event": "phase-end",
            "task": "abdomen",
            "phase": "evaluate",
            "metrics": {"dice": {"liver": 0.5, "spleen": None, "kidney": 0.7}},
        },
    )
    watch()
    assert lines[2].startswith("  abdomen/base round 2/2")
    assert lines[3].startswith("  abdomen/evaluate: validation mean Dice 0.600")


def test_a_missing_journal_is_not_an_error(tmp_path):
    lines: list[str] = []
    JournalWatcher(tmp_path / "none.jsonl", 1, lines.append)()
    assert lines == []
