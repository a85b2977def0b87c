import json

import numpy as np

from core.data.check import check_site, format_report
from core.data.nifti import write_volume
from tests.builders import AFFINE, SHAPE, msd_dataset, nnunet_dataset, truncate


def test_a_clean_site_is_ready(tmp_path):
    nnunet_dataset(tmp_path / "Dataset001_A", n_cases=3)
    report = check_site(tmp_path)
    assert report.ok and not report.all_problems
    summary = report.datasets[0]
    assert summary.usable_cases == 3
    assert summary.cases_with["liver"] == 3
    text = format_report(report)
    assert "Dataset001_A" in text and "liver" in text and "OK: ready to join." in text
    assert "16 x 16 x 16" in text and "2.00 x 2.00 x 2.00" in text


def test_every_problem_is_reported_with_its_file(tmp_path):
    ds = nnunet_dataset(tmp_path / "Dataset001_A", n_cases=4)
    truncate(ds.cases[0].image)
    write_volume(ds.cases[1].label, np.zeros((8, 8, 8), np.uint8), AFFINE)
    write_volume(ds.cases[2].label, np.full(SHAPE, 3, np.uint8), AFFINE)
    (ds.root / "labelsTr" / f"{ds.cases[3].case_id}.nii.gz").unlink()
    (tmp_path / "Dataset002_B").mkdir()
    (tmp_path / "Dataset002_B" / "dataset.json").write_text("not json")
    msd_dataset(tmp_path / "Task09_Spleen", {"0": "background", "1": "spleen"})

    report = check_site(tmp_path)
    assert not report.ok
    paths = [p.path for p in report.all_problems]
    assert ds.cases[0].image in paths
    assert ds.cases[1].label in paths
    assert ds.cases[2].label in paths
    assert ds.root / "labelsTr" / f"{ds.cases[3].case_id}.nii.gz" in paths
    assert tmp_path / "Dataset002_B" / "dataset.json" in paths
    assert [d.dataset.name for d in report.datasets] == ["Dataset001_A", "Task09_Spleen"]
    assert report.datasets[0].usable_cases == 0 and report.datasets[1].usable_cases == 2
    text = format_report(report)
    assert "NOT READY" in text
    assert sum(line.startswith("  ERROR") for line in text.splitlines()) == len(paths)


def test_a_folder_without_datasets_says_what_was_expected(tmp_path):
    (tmp_path / "notes").mkdir()
    report = check_site(tmp_path)
    assert not report.ok
    assert "nnU-Net v2 raw" in report.all_problems[0].message


def test_json_report_holds_aggregates_only(tmp_path):
    nnunet_dataset(tmp_path / "Dataset001_A", n_cases=2)
    data = json.loads(json.dumps(check_site(tmp_path).to_json()))
    assert data["ok"] is True
    entry = data["datasets"][0]
    assert entry["cases"] == 2 and entry["layout"] == "nnunet_v2"
    assert entry["shape_range"] == [[16, 16, 16], [16, 16, 16]]
    assert "case_000" not in json.dumps(data)
