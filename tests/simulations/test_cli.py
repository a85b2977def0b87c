import json
import subprocess
import sys

from typer.testing import CliRunner

from simulations.cli import app
from tests.builders import nnunet_dataset, truncate

runner = CliRunner()


def test_help_answers_without_importing_heavy_packages():
    code = (
        "import sys\n"
        "from simulations.cli import app\n"
        "heavy = [m for m in ('torch', 'monai', 'flwr', 'nibabel') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "site" in result.output and "phantoms" in result.output


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


def test_phantoms_command_writes_a_scenario(tmp_path):
    result = runner.invoke(
        app, ["phantoms", "--scenario", "tiny", "--out", str(tmp_path), "--cases", "1"]
    )
    assert result.exit_code == 0, result.output
    root = tmp_path / "hospC" / "Dataset002_chest"
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 1
    assert (tmp_path / "hospC" / "preview.png").is_file()
    assert "hospA: 1 case(s) of task abdomen" in result.output


def test_phantoms_command_reports_an_unknown_scenario(tmp_path):
    result = runner.invoke(app, ["phantoms", "--scenario", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "built-in ones are" in result.output


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


def test_catalog_and_plan_commands(tmp_path):
    from tests.server.test_catalog import _filled

    _filled(tmp_path / "catalog")
    result = runner.invoke(app, ["catalog", "ls", str(tmp_path / "catalog")])
    assert (
        result.exit_code == 0 and "abdomen" in result.output and "mean Dice 0.900" in result.output
    )
    shown = runner.invoke(app, ["catalog", "show", str(tmp_path / "catalog"), "abdomen"])
    assert json.loads(shown.output)["task"]["versions"][0]["version"] == 1
    missing = runner.invoke(app, ["catalog", "show", str(tmp_path / "catalog"), "chest"])
    assert missing.exit_code == 2 and "no task 'chest'" in missing.output
    exported = runner.invoke(
        app, ["catalog", "export", str(tmp_path / "catalog"), "-o", str(tmp_path / "b")]
    )
    assert exported.exit_code == 0 and (tmp_path / "b" / "manifest.json").is_file()
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nname = "abdomen"\nstructures = ["livr"]\n')
    checked = runner.invoke(app, ["plan", "check", str(plan)])
    assert checked.exit_code == 2 and "closest: liver" in checked.output
