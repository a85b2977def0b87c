import json
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from csfl import app

runner = CliRunner()

EVERY_COMMAND = (
    "site",
    "predict",
    "plan",
    "catalog",
    "app-folder",
    "deploy-local",
    "fleet-gate",
    "phantoms",
    "simulate",
    "benchmark",
    "curve",
    "trim-report",
    "merge-report",
    "privacy-audit",
    "privacy-curve",
    "merge-matrix",
    "gpu-check",
    "profile",
)


def test_help_answers_without_importing_heavy_packages():
    code = (
        "import sys\n"
        "import client.cli, core.cli, server.cli\n"
        "from csfl import app\n"
        "heavy = [m for m in ('torch', 'monai', 'flwr', 'nibabel') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "site" in result.output and "phantoms" in result.output


def test_csfl_gathers_every_command_from_client_server_and_simulations():
    csfl = typer.main.get_command(app)
    assert isinstance(csfl, click.Group)
    assert set(csfl.commands) == set(EVERY_COMMAND)
    subcommands = {
        name: set(group.commands)
        for name, group in csfl.commands.items()
        if isinstance(group, click.Group)
    }
    assert subcommands == {
        "site": {"check"},
        "plan": {"check"},
        "catalog": {"ls", "show", "export", "verify"},
    }


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


def test_profile_scale_names_an_unknown_scenario():
    args = ["profile", "--scale", "--scale-scenario", "nonsense"]  # refused before measuring
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "no scenario 'nonsense'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [("local_steps", "expected KEY=VALUE"), ("server_lr=100", "server_lr: 100.0 is outside")],
)
def test_benchmark_refuses_a_bad_setting_before_any_work(tmp_path, setting, message):
    args = ["benchmark", "--scenario", "tiny", "--out", str(tmp_path / "b"), "--set", setting]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "b").exists()
