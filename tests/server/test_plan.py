import pytest

from core.phases import CALIBRATE
from server.plan import PlanError, load_plan, parse_plan

GOOD = """
[model]
encoder_widths = [8, 16, 32, 64]
patch = [32, 32, 32]
spacing_mm = [2.0, 2.0, 3.0]

[training]
val_fraction = 0.3

[[tasks]]
name = "abdomen"
structures = ["liver", "spleen"]
sites = ["hospA", "hospB"]
rounds = 2
local_steps = 5
calibrate_rounds = 2

[[tasks]]
name = "chest"
structures = ["heart"]
"""


def test_a_good_plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(GOOD)
    plan = load_plan(path)
    assert [t.name for t in plan.tasks] == ["abdomen", "chest"]
    assert plan.task("abdomen").sites == ("hospA", "hospB")
    assert plan.task("chest").sites is None  # any site that labels the heart
    assert plan.patch == (32, 32, 32) and plan.preprocessing.spacing_mm == (2.0, 2.0, 3.0)
    assert plan.training.val_fraction == 0.3
    abdomen, chest = plan.tasks
    calibrate = abdomen.of(CALIBRATE)
    assert abdomen.section.calibrate and (calibrate.rounds, calibrate.steps) == (2, 5)
    assert chest.of(CALIBRATE).rounds == 1


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('"spleen"]', '"splen"]', r"tasks\[0\]\.structures: 'splen'.*closest: spleen"),
        ("patch = [32, 32, 32]", "patch = [30, 32, 32]", "multiples of 8"),
        ('sites = ["hospA", "hospB"]', "sites = 3", r"tasks\[0\]\.sites"),
        ("rounds = 2", "rounds = 0", r"tasks\[0\]\.rounds"),
        ("calibrate_rounds = 2", "calibrate = 1", r"tasks\[0\]\.calibrate: expected true or"),
        ('name = "chest"', 'name = "abdomen"', "distinct names"),
        ('name = "chest"', 'name = "Chest Task"', r"tasks\[1\]\.name"),
        ("val_fraction = 0.3", "val_fraction = 1.5", "val_fraction"),
        (
            "local_steps = 5",
            "local_step = 5",
            "unknown key 'local_step'; did you mean 'local_steps'",
        ),
        ("local_steps = 5", "local_steps = 0", r"tasks\[0\]\.local_steps: 0 is outside"),
        ("val_fraction = 0.3", "batch_size = 0", r"training\.batch_size: 0 is outside"),
        ("val_fraction = 0.3", "batch_size = -2", "batch_size"),
        ("val_fraction = 0.3", "max_payload_mb = -1", "max_payload_mb"),
        ("val_fraction = 0.3", "bach_size = 2", "did you mean 'batch_size'"),
        ("patch = [32, 32, 32]", "patch = [0, 0, 0]", "patch"),
        ("patch = [32, 32, 32]", "patch = [-32, 32, 32]", "patch"),
        ("spacing_mm = [2.0, 2.0, 3.0]", "spacing_mm = [0.0, 2.0, 3.0]", "spacing_mm"),
        ("spacing_mm = [2.0, 2.0, 3.0]", "hu_window = [500.0, -500.0]", "low < high"),
        ("encoder_widths = [8, 16, 32, 64]", "encoder_widths = [8, 16, 32, 100000]", "widths"),
        ("local_steps = 5", "lr = nan", r"tasks\[0\]\.lr: expected a finite number"),
        ("local_steps = 5", "temperature = inf", "temperature"),
        ("local_steps = 5", "min_sites = 3", r"min_sites: 3 > the 2 sites"),
        ('sites = ["hospA", "hospB"]', 'sites = ["hospA", "hospA"]', "distinct site names"),
        ("local_steps = 5", 'server_optimizer = "yogi"', "server_optimizer 'yogi': expected"),
        ("local_steps = 5", "server_lr = 100.0", r"tasks\[0\]\.server_lr: 100.0 is outside"),
        ("local_steps = 5", "server_momentum = 1.0", "server_momentum"),
        ("local_steps = 5", "proximal_mu = -1.0", r"tasks\[0\]\.proximal_mu"),
        ("val_fraction = 0.3", 'precision = "fp8"', "precision 'fp8': expected one of"),
    ],
)
def test_bad_plans_name_the_field(tmp_path, old, new, match):
    path = tmp_path / "plan.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(PlanError, match=match) as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_unreadable_plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text("[model\n")
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(path)


def test_partial_labels_need_trimming_and_calibration_off(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(GOOD.replace("local_steps = 5", "partial_labels = true", 1))
    with pytest.raises(PlanError, match="partial_labels: trimming and calibration need"):
        load_plan(path)
    path.write_text(GOOD.replace("local_steps = 5", "partial_labels = true\ntrim = false", 1))
    path.write_text(path.read_text().replace("calibrate_rounds = 2", "calibrate = false", 1))
    assert load_plan(path).tasks[0].section.partial_labels


def test_adam_on_the_server_takes_no_momentum(tmp_path):
    path = tmp_path / "plan.toml"
    text = GOOD.replace("local_steps = 5", 'server_optimizer = "adam"\nserver_momentum = 0.9', 1)
    path.write_text(text)
    with pytest.raises(PlanError, match="server_momentum: sgd's setting"):
        load_plan(path)


def test_loops_outside_the_federation_train_as_the_plan_says(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(
        GOOD.replace("val_fraction = 0.3", "val_fraction = 0.3\nbatch_size = 3\nseed = 7")
    )
    plan = load_plan(path)
    chest = plan.task("chest")
    settings = plan.train_settings(chest, steps=40)
    assert (settings.batch_size, settings.seed, settings.steps) == (3, 7, 40)
    assert settings.lr == chest.optimiser.lr and settings.augmentation.patch_size == (32, 32, 32)
    assert plan.train_settings().batch_size == 3  # the first task's optimiser, same batch


def test_a_private_task_is_private_in_every_phase_and_without_fedprox(tmp_path):
    path = tmp_path / "plan.toml"
    private = GOOD.replace("calibrate_rounds = 2", "dp_noise_multiplier = 1.1\ndp_epsilon = 8")
    path.write_text(private)  # trimming and calibration run under DP-SGD too
    plan = load_plan(path)
    first = plan.tasks[0]
    assert first.privacy.on and first.privacy.epsilon_budget == 8.0 and first.section.trim
    assert not plan.tasks[1].privacy.on  # DP is per task, off by default
    assert parse_plan(plan.document(), "again").tasks[0].privacy == first.privacy
    path.write_text(private.replace("dp_epsilon = 8", "dp_epsilon = 8\nproximal_mu = 0.01"))
    with pytest.raises(PlanError, match="proximal_mu"):
        load_plan(path)
