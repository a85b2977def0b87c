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


def test_catalog_verify(tmp_path):
    _filled(tmp_path / "catalog")
    ok = runner.invoke(app, ["catalog", "verify", str(tmp_path / "catalog")])
    assert ok.exit_code == 0 and ok.output.strip().endswith(": ok")
    (tmp_path / "catalog" / "decoders" / "abdomen" / "v1.safetensors").write_bytes(b"altered")
    bad = runner.invoke(app, ["catalog", "verify", str(tmp_path / "catalog")])
    assert bad.exit_code == 1 and "sha256 does not match" in bad.output
    assert "1 problem(s)" in bad.output
    missing = runner.invoke(app, ["catalog", "verify", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "catalog.json").write_text("{not json")
    broken = runner.invoke(app, ["catalog", "verify", str(tmp_path / "broken")])
    assert broken.exit_code == 2 and "not JSON" in broken.output


def test_plan_check_prints_every_phase_budget(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[tasks]]\nname = "abdomen"\nstructures = ["liver"]\nrounds = 2\nlocal_steps = 7\n'
        "search_steps = 4\n"
    )
    result = runner.invoke(app, ["plan", "check", str(plan)])
    assert result.exit_code == 0, result.output
    assert "base 2x7, search 1x4, distill 2x7, calibrate 1x7" in result.output
    plan.write_text('[[tasks]]\nname = "abdomen"\nstructures = ["liver"]\nlocal_step = 5\n')
    typo = runner.invoke(app, ["plan", "check", str(plan)])
    assert typo.exit_code == 2 and "did you mean 'local_steps'" in typo.output


def test_app_folder_holds_the_app_and_refuses_a_folder_in_use(tmp_path):
    written = runner.invoke(app, ["app-folder", str(tmp_path / "app")])
    assert written.exit_code == 0, written.output
    assert (tmp_path / "app" / "pyproject.toml").is_file()
    assert (tmp_path / "app" / "server" / "app.py").is_file()
    again = runner.invoke(app, ["app-folder", str(tmp_path / "app")])
    assert again.exit_code == 2 and "expected a new or empty folder" in again.output


def test_catalog_ls_and_verify_agree(tmp_path):
    folder = tmp_path / "catalog"
    _filled(folder)
    index = json.loads((folder / "catalog.json").read_text())
    index["tasks"][0]["versions"][0]["metrics"] = {"dice": {"liver": 1000.0}}
    (folder / "catalog.json").write_text(json.dumps(index))
    listed = runner.invoke(app, ["catalog", "ls", str(folder)])
    verified = runner.invoke(app, ["catalog", "verify", str(folder)])
    assert listed.exit_code == verified.exit_code == 1
    assert "abdomen" in listed.output and "fails its checks" in listed.output
    assert "1000" not in listed.output.split("problem:")[0]  # no figure of a bad record
    assert "expected a Dice value in [0, 1]" in listed.output


def test_a_catalog_holding_only_a_journal_is_a_run_before_its_first_registration(tmp_path):
    from server.catalog import Catalog

    Catalog(tmp_path / "run").journal("run-start", plan="p.toml")
    listed = runner.invoke(app, ["catalog", "ls", str(tmp_path / "run")])
    assert listed.exit_code == 0, listed.output
    assert "encoder: none yet" in listed.output and "last journal event: run-start" in listed.output
    verified = runner.invoke(app, ["catalog", "verify", str(tmp_path / "run")])
    assert verified.exit_code == 0 and verified.output.strip().endswith(": ok")
    nothing = runner.invoke(app, ["catalog", "ls", str(tmp_path / "nothing")])
    assert nothing.exit_code == 2 and not (tmp_path / "nothing").exists()


def test_catalog_ls_shows_a_private_task_s_largest_spent_epsilon(tmp_path):
    from core.model import Decoder, Genotype
    from tests.models import TINY

    catalog, _, _ = _filled(tmp_path / "catalog")
    private = {
        "sites": ["hospB", "hospC"],
        "privacy": {"delta": 1e-5, "epsilon": {"hospB": 2.5, "hospC": 3.25}},
    }
    decoder = Decoder(TINY.widths, Genotype.teacher(3), ("heart",))
    catalog.register("chest", decoder, {"dice": {"heart": 0.5}}, private)
    listed = runner.invoke(app, ["catalog", "ls", str(tmp_path / "catalog")]).output
    assert "DP: epsilon <= 3.25 at delta 1e-05" in listed
    assert "DP" not in listed.split("chest")[0]  # the task without DP says nothing of it
