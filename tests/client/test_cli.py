import json

import typer
from typer.testing import CliRunner

from client.cli import add_commands
from tests.builders import nnunet_dataset, truncate

runner = CliRunner()
app = typer.Typer()
add_commands(app)


def test_site_check_passes_a_clean_site_and_writes_json(tmp_path):
    nnunet_dataset(tmp_path / "data" / "Dataset001_A")
    result = runner.invoke(
        app, ["site", "check", str(tmp_path / "data"), "--json", str(tmp_path / "report.json")]
    )
    assert result.exit_code == 0, result.output
    assert "OK: ready to join." in result.output
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


def test_site_check_fails_and_names_each_bad_file(tmp_path):
    ds = nnunet_dataset(tmp_path / "Dataset001_A", n_cases=3)
    truncate(ds.cases[0].image)
    truncate(ds.cases[2].label)
    result = runner.invoke(app, ["site", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert str(ds.cases[0].image) in result.output
    assert str(ds.cases[2].label) in result.output
    assert "1/3 cases usable" in result.output


def test_predict_a_folder(tmp_path, phantom_dataset, trained_bundle):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in phantom_dataset.cases[:2]:
        (inputs / case.image.name).write_bytes(case.image.read_bytes())
    result = runner.invoke(
        app, ["predict", str(trained_bundle), str(inputs), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    for case in phantom_dataset.cases[:2]:
        assert (tmp_path / "out" / case.image.name).is_file()
    assert (tmp_path / "out" / "labels.labels.json").is_file()


def test_predict_reports_a_broken_bundle(tmp_path, trained_bundle):
    broken = tmp_path / "bundle"
    broken.mkdir()
    for path in trained_bundle.rglob("*"):
        if path.is_file():
            dest = broken / path.relative_to(trained_bundle)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    (broken / "encoder.safetensors").write_bytes(b"tampered")
    result = runner.invoke(app, ["predict", str(broken), str(tmp_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error:" in result.output and "sha256 does not match" in result.output
    assert "Traceback" not in result.output
