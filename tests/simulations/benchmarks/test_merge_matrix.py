import json

import pytest

from simulations.benchmarks.merge_matrix import family, format_matrix, record
from simulations.benchmarks.merge_report import (
    BEST,
    COMPARED,
    OWN,
    format_merge_report,
    task_summary,
)


def _row(merged, **alone):
    return {**dict.fromkeys(COMPARED, merged), **{f"alone:{t}": v for t, v in alone.items()}}


def test_each_task_is_summed_up_against_its_own_and_its_best_single_decoders():
    report = {
        "tasks": {
            "pelvis": {
                "sacrum": _row(0.50, pelvis=0.80, head=0.10),
                "urinary_bladder": _row(0.70, pelvis=0.70),
            },
            "abdomen": {"liver": _row(0.90, abdomen=0.85, tumour=0.92)},
        }
    }
    summary = task_summary(report)
    pelvis = summary["pelvis"]
    assert pelvis["dice"][OWN] == pytest.approx(0.75) == pelvis["dice"][BEST]
    assert pelvis["dice"]["confidence"] == pytest.approx(0.60)
    assert pelvis["ratio"] == pytest.approx(0.8) and pelvis["worst_structure"] == "sacrum"
    abdomen = summary["abdomen"]  # the best single decoder of the liver is another task's
    assert abdomen["dice"][OWN] == pytest.approx(0.85) and abdomen["dice"][BEST] == 0.92
    text = format_matrix({"s": summary})
    assert "Worst task: s/pelvis, merged 0.80x" in text and "s/pelvis/sacrum, 0.300" in text
    shown = {"overlap": [], "cases": {}, "dice": {}, "domain": {}, "won": {}, **report}
    lines = format_merge_report(shown).splitlines()  # csfl merge-report: the tasks first
    assert lines[2] == "| pelvis | 0.750 | 0.600 | 0.750 | 0.80 | sacrum (-0.300) |"


def test_the_bundled_family_has_seven_scenarios_and_an_empty_folder_is_refused(tmp_path):
    assert len(family()) == 7
    with pytest.raises(ValueError, match="no scenario"):
        family(tmp_path)


def test_the_matrix_file_keeps_the_scenarios_run_before(tmp_path):
    record(tmp_path, "first", {"abdomen": {"ratio": 0.9}})
    (tmp_path / "other.json").write_text("{}")
    table = record(tmp_path, "second", {"thorax": {"ratio": 1.0}})
    assert set(table) == {"first", "second"}
    assert json.loads((tmp_path / "matrix.json").read_text())["first"]["abdomen"]["ratio"] == 0.9
    (tmp_path / "matrix.json").write_text("[not a table")
    assert set(record(tmp_path, "third", {})) == {"third"}
