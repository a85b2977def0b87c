"""``csfl benchmark --jobs``: methods side by side in child processes (fake children)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from simulations.benchmarks import side_by_side
from simulations.benchmarks.side_by_side import (
    next_ready,
    pending_methods,
    run_side_by_side,
    threads_each,
)

CHILD = """
import json, sys, time
from pathlib import Path
out, method, fail = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
begin = time.time()
time.sleep(0.3)
if fail:
    print("boom")
    sys.exit(3)
(out / (method + ".json")).write_text(json.dumps({"begin": begin, "end": time.time()}))
"""


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(side_by_side, "POLL_SECONDS", 0.05)


def _command(out: Path, failing: str = "") -> Callable[[str], list[str]]:
    def command(method: str) -> list[str]:
        return [sys.executable, "-c", CHILD, str(out), method, str(int(method == failing))]

    return command


def test_children_run_at_most_jobs_at_once_longest_first(tmp_path: Path) -> None:
    said: list[str] = []
    methods = ("finetune", "continual", "joint", "upper_bound", "naive_merge")
    run_side_by_side(methods, 2, _command(tmp_path), tmp_path, {}, say=said.append)
    runs = {m: json.loads((tmp_path / f"{m}.json").read_text()) for m in methods[:4]}
    assert not (tmp_path / "naive_merge.json").exists()  # comes with continual
    starts = [s.split(":")[0] for s in said if "started" in s]
    assert starts == ["upper_bound", "continual", "joint", "finetune"]
    for m, run in runs.items():  # never three at once
        overlapping = [
            o for o, r in runs.items() if r["begin"] < run["end"] and r["end"] > run["begin"]
        ]
        assert len(overlapping) <= 2, (m, overlapping)
    assert (tmp_path / "logs" / "joint.log").is_file()


def test_a_failed_child_is_named_with_its_log_and_the_others_finish(tmp_path: Path) -> None:
    methods = ("upper_bound", "joint", "lwf")
    with pytest.raises(RuntimeError, match=r"joint \(exit 3, see .*joint\.log\)"):
        run_side_by_side(methods, 2, _command(tmp_path, "joint"), tmp_path, {}, say=lambda _: None)
    assert (tmp_path / "upper_bound.json").is_file() and (tmp_path / "lwf.json").is_file()
    assert "boom" in (tmp_path / "logs" / "joint.log").read_text()


def test_no_trim_starts_once_continual_has_ended(tmp_path: Path) -> None:
    # no_trim is queued before a free slot opens but must wait for continual
    methods = ("continual", "no_trim", "upper_bound", "finetune")
    run_side_by_side(methods, 3, _command(tmp_path), tmp_path, {}, say=lambda _: None)
    runs = {m: json.loads((tmp_path / f"{m}.json").read_text()) for m in methods}
    assert runs["no_trim"]["begin"] >= runs["continual"]["end"]
    assert runs["finetune"]["begin"] < runs["continual"]["end"]  # the free slot was used


def test_a_method_waits_only_for_a_predecessor_still_to_run() -> None:
    assert next_ready(["no_trim", "lwf"], ["continual"]) == "lwf"
    assert next_ready(["no_trim"], ["continual"]) is None
    assert next_ready(["no_trim", "lwf"], []) == "no_trim"  # continual kept or not asked for


def test_kept_results_are_not_trained_again(tmp_path: Path) -> None:
    (tmp_path / "joint.json").write_text("{}")
    assert pending_methods(("joint", "mib", "naive_merge", "continual"), tmp_path) == [
        "continual",
        "mib",
    ]


def test_each_child_gets_an_equal_share_of_the_cores() -> None:
    assert threads_each(2, 2) == 1
    assert threads_each(16, 3) == 5
    assert threads_each(2, 4) == 1
