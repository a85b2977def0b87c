"""Property tests: any plan document, and any round config or reply record from the other
side, parses into a bounded record or is refused with the field named; never another error."""

import math

from flwr.app import ConfigRecord, MetricRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data.transforms import Preprocessing
from core.describe import ProtocolError
from core.model import EncoderConfig, Genotype
from core.phases import PHASES
from core.protocol import RoundConfig
from core.records import RecordError, keys_of
from server.plan import PlanError, parse_plan, task_keys

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["any", "liver", "../x", "hospA", "fedavg", "robust"])
)
VALUES = SCALARS | st.lists(SCALARS, max_size=5)
GOOD_TASK = {"name": "abdomen", "structures": ["liver", "spleen"], "sites": ["hospA"]}


@FUZZ
@given(
    key=st.sampled_from([*sorted(task_keys()), "local_step", "bogus"]),
    value=VALUES,
    model=st.dictionaries(
        st.sampled_from(["encoder_widths", "patch", "spacing_mm", "hu_window", "x"]),
        VALUES,
        max_size=2,
    ),
)
def test_any_task_or_model_value_gives_a_plan_or_a_named_refusal(key, value, model):
    doc = {"model": model, "tasks": [{**GOOD_TASK, key: value}]}
    try:
        plan = parse_plan(doc, "plan")
    except PlanError as e:
        assert str(e).startswith("plan")
        return
    task = plan.tasks[0]
    for phase in PHASES.values():  # every accepted number is finite and within its bounds
        for name, v in vars(task.of(phase)).items():
            assert not isinstance(v, float) or math.isfinite(v), (phase.name, name)
    assert task.optimiser.lr > 0 and task.section.min_sites >= 1


CONFIG = RoundConfig(
    task="abdomen",
    phase="teacher",
    structures=("liver",),
    genotype=Genotype.teacher(3),
    encoder=EncoderConfig((8, 16, 32, 64)),
    preprocessing=Preprocessing(),
    patch=(32, 32, 32),
    encoder_sha256="ab" * 32,
)


@FUZZ
@given(
    key=st.sampled_from(sorted(CONFIG.to_record().keys())),
    value=VALUES | st.sampled_from(['{"widths": [8, 100000]}', '{"stages": []}', "{", "x" * 70000]),
)
def test_any_round_config_field_parses_bounded_or_is_refused(key, value):
    record = CONFIG.to_record()
    try:
        record[key] = value
    except (TypeError, ValueError):
        return  # Flower itself does not carry such a value
    try:
        cfg = RoundConfig.from_record(ConfigRecord(dict(record)))
    except ProtocolError as e:
        assert "round config" in str(e) or key in str(e)
        return
    assert max(cfg.encoder.widths) <= 1024 and max(cfg.patch) <= 256 and cfg.batch_size <= 64
    assert len(cfg.encoder_sha256) in (0, 64)


@FUZZ
@given(
    phase=st.sampled_from(sorted(PHASES)),
    metrics=st.dictionaries(
        st.sampled_from(
            [
                "examples",
                "loss",
                "seconds",
                "kd-loss",
                "body-lo",
                "body-hi",
                "dice-sum/liver",
                "dice-n/liver",
            ]
        ),
        st.integers(-(2**40), 2**40) | st.floats(),
        max_size=5,
    ),
)
def test_any_reply_metrics_parse_bounded_or_are_refused(phase, metrics):
    spec = PHASES[phase]
    try:
        reply = spec.parse_reply(MetricRecord(metrics), CONFIG, "site")
    except RecordError as e:
        assert str(e).startswith("site")
        return
    for name in keys_of(spec.reply_type):
        value = getattr(reply, name)
        assert value is None or (math.isfinite(value) and value >= -3000), (name, value)
    assert 0 <= reply.examples <= 1_000_000
