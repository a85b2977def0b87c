import json

import typer
from typer.testing import CliRunner

from server.cli import add_commands
from tests.server.test_catalog import _filled

runner = CliRunner()
app = typer.Typer()
add_commands(app)


def test_catalog_and_plan_commands(tmp_path):
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


def test_deploy_local_rejects_a_site_without_its_data_folder(tmp_path):
    result = runner.invoke(
        app,
        ["deploy-local", "--plan", "p.toml", "--catalog", str(tmp_path), "--site", "hospA"],
    )
    assert result.exit_code == 2
    assert "--site 'hospA': expected NAME=DATA_DIR" in result.output
