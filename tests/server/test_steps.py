"""Each server step with a fake federation: replies crafted in the test, no Flower engine."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from core.domain import CENTROID_WIDTH, SITE_CENTROIDS
from core.model import Decoder, Encoder, Genotype
from core.payload import record_to_state, state_to_record
from core.phases import BASE, CALIBRATE, DISTILL, EVALUATE, SEARCH, TEACHER
from core.phases.calibrate import CENTROIDS, HEAD_PREFIX, THRESHOLDS, CalibrateReply
from core.phases.distill import DistillReply
from core.phases.evaluate import EvaluateReply
from core.phases.search import SearchReply
from core.phases.spec import TaskState
from core.protocol import (
    ARCH,
    CONFIG,
    DECODER,
    DOMAIN,
    ENCODER,
    ENCODER_SHA,
    HEADS,
    METRICS,
    PRIVACY,
    SETTINGS,
    RoundConfig,
    SiteReply,
)
from core.protocol import TEACHER as TEACHER_RECORD
from core.scores import ScoreSums
from server.aggregate import RoundFailed
from server.catalog import Catalog
from server.federation import Reply, SiteInfo
from server.orchestrator import initial_decoder, lifecycle
from server.peers import PeerSkills
from server.plan import parse_plan
from server.steps import Registration, TaskRun
from tests.models import TINY

PLAN = {
    "model": {"encoder_widths": list(TINY.widths), "patch": [32, 32, 32], "spacing_mm": [4, 4, 4]},
    "tasks": [
        {
            "name": "abdomen",
            "structures": ["liver", "spleen"],
            "sites": ["A", "B", "C"],
            "rounds": 2,
            "local_steps": 3,
        }
    ],
}


class FakeFederation:
    """Answers every message through ``respond(site, message_type, content)``.

    ``offline`` holds the names of the sites whose nodes the SuperLink sees offline.
    """

    def __init__(self, respond):
        self.respond = respond
        self.sent: list[tuple[str, str, RecordDict]] = []
        self.offline: set[str] = set()

    def online_node_ids(self):
        return {s.node_id for s in _sites(*CASES) if s.name not in self.offline}

    def exchange(self, message_type, contents, sites, group, timeout):
        assert 0 < timeout < 10_000
        out = []
        for site in sites:
            content = contents[site.node_id]
            self.sent.append((site.name, message_type, content))
            answer = self.respond(site.name, message_type, content)
            out.append(answer if isinstance(answer, Reply) else Reply(site, answer))
        return out


CASES = {"A": 2, "B": 4, "C": 4, "D": 4}  # described; validation takes 1 case of each
TRAIN = {site: n - 1 for site, n in CASES.items()}


def _sites(*names):
    return tuple(SiteInfo(i + 1, n, [(("liver", "spleen"), CASES[n])]) for i, n in enumerate(names))


def _run(tmp_path, respond, sites=("A", "B"), min_sites=1, training=None, **task):
    doc = {**PLAN, "tasks": [{**PLAN["tasks"][0], "min_sites": min_sites, **task}]}
    doc["training"] = training or {}
    plan = parse_plan(doc)
    task = plan.tasks[0]
    federation = FakeFederation(respond)
    run = TaskRun(plan, task, Catalog(tmp_path / "catalog"), federation, _sites(*sites))
    torch.manual_seed(0)
    return run, TaskState(Encoder(TINY), initial_decoder(plan, task)), federation


def _answer(content, metrics, **arrays):
    sha = ConfigRecord(content[CONFIG])[ENCODER_SHA]
    return RecordDict(
        {**arrays, METRICS: metrics.to_record(), CONFIG: ConfigRecord({ENCODER_SHA: sha})}
    )


def _shifted(content, key, delta):
    """The record ``key`` of the message with ``delta`` added to every value (fp32)."""
    state = {k: torch.from_numpy(a.numpy()).float() + delta for k, a in content[key].items()}
    return state_to_record(state, fp16=False)


def test_base_averages_by_examples_keeps_a_checkpoint_and_freezes_the_encoder(tmp_path):
    shifts = {"A": 1.0, "B": -1.0}  # weights 1 and 3: the training splits of 2 and 4 cases

    def respond(site, kind, content):
        assert kind == "train.base"
        cfg = RoundConfig.from_record(content[CONFIG])
        assert BASE.parse_settings(content[SETTINGS]).steps == 3 and cfg.rounds == 2
        n, delta = TRAIN[site], shifts[site]
        arrays = {
            DECODER: _shifted(content, DECODER, delta),
            ENCODER: _shifted(content, ENCODER, 0),
        }
        return _answer(content, SiteReply(n, 0.5), **arrays)

    run, state, federation = _run(tmp_path, respond)
    before = state.decoder.state_dict()
    after = run.run(BASE, state)
    for name, value in after.decoder.state_dict().items():  # (1 * +1 + 3 * -1) / 4 per round
        assert torch.allclose(value, before[name] - 1.0, atol=1e-3), name
    assert after is not state and torch.equal(state.decoder.state_dict()[name], before[name])
    assert after.encoder.frozen and run.catalog.encoder() is not None
    assert all(ENCODER in content for _, _, content in federation.sent)  # trainable: every round
    assert set(run.ledger.bytes_up) == {"A", "B"} and run.ledger.bytes_down["A"] > 0
    rounds = [e for e in run.catalog.events() if e["event"] == "round-end"]
    assert [(e["round"], e["sites"]) for e in rounds] == [(1, ["A", "B"]), (2, ["A", "B"])]
    again, _ = _run(tmp_path, lambda *_: pytest.fail("a finished phase must not run again"))[:2]
    restored = again.run(BASE, state)
    assert all(
        torch.equal(restored.decoder.state_dict()[k], v)
        for k, v in after.decoder.state_dict().items()
    )
    assert again.ledger.bytes_up == run.ledger.bytes_up


def _frozen_state(run, state):
    encoder = run.store_encoder(state.encoder)
    return TaskState(encoder, state.decoder)


def test_a_rejected_reply_and_a_dropped_site_leave_the_round_to_the_others(tmp_path):
    def respond(site, kind, content):
        if site == "C":
            return Reply(_sites("C")[0], None, "Node Unavailable")
        delta = math.nan if site == "B" else 0.5
        reply = SiteReply(TRAIN[site], 0.1)
        return _answer(content, reply, **{DECODER: _shifted(content, DECODER, delta)})

    run, state, federation = _run(tmp_path, respond, sites=("A", "B", "C"))
    state = _frozen_state(run, state)
    after = run.run(TEACHER, state)
    assert set(run.ledger.rejected) == {"B", "C"}
    assert "NaN" in run.ledger.rejected["B"] and "Node Unavailable" in run.ledger.rejected["C"]
    rounds = [e for e in run.catalog.events() if e["event"] == "round-end"]
    assert rounds[0]["left"] == {"C": "Node Unavailable"}  # why a site left is journaled
    name, value = next(iter(after.decoder.state_dict().items()))
    assert torch.allclose(value, state.decoder.state_dict()[name] + 1.0, atol=1e-2)
    sent = [content for site, _, content in federation.sent if site == "A"]
    assert ENCODER in sent[0] and ENCODER not in sent[1]  # the frozen encoder travels once
    run2, state2, _ = _run(tmp_path / "x", respond, sites=("A", "B", "C"), min_sites=2)
    with pytest.raises(RoundFailed, match="1 usable site"):
        run2.run(TEACHER, _frozen_state(run2, state2))


def _teacher_reply(site, content):
    return _answer(content, SiteReply(TRAIN[site], 0.1), **{DECODER: content[DECODER]})


def test_a_site_that_drops_and_comes_back_rejoins_at_the_next_round(tmp_path):
    def respond(site, kind, content):
        if site == "B" and int(ConfigRecord(content[CONFIG])["round"]) == 1:
            # its link drops during round 1; by round 2 its node is online again
            return Reply(_sites("A", "B")[1], None, "no reply: the node went offline")
        return _teacher_reply(site, content)

    run, state, _ = _run(tmp_path, respond)
    run.run(TEACHER, _frozen_state(run, state))
    rounds = [e for e in run.catalog.events() if e["event"] == "round-end"]
    assert [r["sites"] for r in rounds] == [["A"], ["A", "B"]]
    (rejoined,) = [e for e in run.catalog.events() if e["event"] == "sites-rejoined"]
    assert rejoined["sites"] == ["B"] and rejoined["at"] == "abdomen/teacher/2"
    assert [s.name for s in run.sites] == ["A", "B"]


def test_a_round_short_of_sites_waits_for_them_and_is_sent_again(tmp_path, monkeypatch):
    monkeypatch.setattr("server.steps.POLL_SECONDS", 0.01)
    tries = {"B": 0}
    federation = None

    def respond(site, kind, content):
        if site == "B":
            tries["B"] += 1
            if tries["B"] == 1:  # offline for the first send of round 1, then back
                federation.offline.add("B")
                return Reply(_sites("A", "B")[1], None, "no reply: the node went offline")
        return _teacher_reply(site, content)

    polls = []

    def online_later():
        polls.append(1)
        if len(polls) >= 3:
            federation.offline.discard("B")
        return {s.node_id for s in _sites(*CASES) if s.name not in federation.offline}

    run, state, federation = _run(tmp_path, respond, min_sites=2)
    federation.online_node_ids = online_later
    run.run(TEACHER, _frozen_state(run, state))
    events = run.catalog.events()
    (retry,) = [e for e in events if e["event"] == "round-retry"]
    assert retry["at"] == "abdomen/teacher/1" and "B" in retry["left"]
    rounds = [e for e in events if e["event"] == "round-end"]
    assert [r["sites"] for r in rounds] == [["A", "B"], ["A", "B"]]


def test_a_round_whose_sites_stay_away_past_the_grace_period_fails(tmp_path, monkeypatch):
    monkeypatch.setattr("server.steps.POLL_SECONDS", 0.01)
    federation = None

    def respond(site, kind, content):
        if site == "B":
            federation.offline.add("B")
            return Reply(_sites("A", "B")[1], None, "no reply: the node went offline")
        return _teacher_reply(site, content)

    run, state, federation = _run(tmp_path, respond, min_sites=2, training={"rejoin_grace_s": 0.05})
    with pytest.raises(RoundFailed, match="1 usable site"):
        run.run(TEACHER, _frozen_state(run, state))
    assert not [e for e in run.catalog.events() if e["event"] == "round-retry"]


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"examples": 10**9}, "examples"),
        ({"examples": 2, "loss": math.inf}, "finite"),
        ({"examples": 2.5}, "whole number"),
        ({}, "missing 'examples'"),
        ({"examples": 2}, "reports 2 cases; its description implies 3"),
    ],
)
def test_malformed_reply_metrics_are_rejected(tmp_path, metrics, reason):
    def respond(site, kind, content):
        reply = _answer(content, SiteReply(TRAIN[site]), **{DECODER: _shifted(content, DECODER, 0)})
        if site == "B":
            reply[METRICS] = type(reply[METRICS])(metrics)
        return reply

    run, state, _ = _run(tmp_path, respond)
    run.run(TEACHER, _frozen_state(run, state))
    assert reason in run.ledger.rejected["B"]


def test_search_then_distill_yield_a_student_within_the_budget(tmp_path):
    def respond(site, kind, content):
        if kind == "train.search":
            arch = _shifted(content, ARCH, 0.0)
            arch["alpha"].numpy()[..., 0] += 3.0  # every site prefers the first operation
            return _answer(
                content, SearchReply(TRAIN[site], 0.3, 0.0, expected_parameters=1e5), **{ARCH: arch}
            )
        assert TEACHER_RECORD in content  # the teacher travels with the student
        return _answer(
            content,
            DistillReply(TRAIN[site], 0.2, 0.0, kd_loss=0.1),
            **{DECODER: _shifted(content, DECODER, 0)},
        )

    run, state, _ = _run(tmp_path, respond)
    state = _frozen_state(run, state)
    searched = run.run(SEARCH, state)
    meta = run.phase_end("search")
    assert searched.genotype is not None and meta["parameters"] <= meta["budget"]
    assert len(next(iter(run.federation.sent))[2][ARCH]) == 2  # alpha and beta only
    student = run.run(DISTILL, searched)
    assert student.decoder.genotype == searched.genotype != state.decoder.genotype


def test_calibration_joins_the_sites_domains_row_by_row_and_refuses_broken_ones(tmp_path):
    # rows: background, liver, spleen; 0: the site saw no spleen; C's are not numbers
    thresholds = {"A": [0.1, 0.2, 0.0], "B": [0.3, 0.4, 0.5], "C": [math.nan] * 3}
    shares = torch.eye(CENTROID_WIDTH)  # one-hot descriptors: slab kinds, by site
    kinds = {"A": range(0, SITE_CENTROIDS), "B": range(4, 4 + SITE_CENTROIDS), "C": range(8)}

    def respond(site, kind, content):
        decoder = content[DECODER]
        heads = {
            k: torch.from_numpy(a.numpy()).float()
            for k, a in decoder.items()
            if k.startswith(HEAD_PREFIX)
        }
        domain = {
            CENTROIDS: shares[list(kinds[site])].expand(3, SITE_CENTROIDS, CENTROID_WIDTH),
            THRESHOLDS: torch.tensor(thresholds[site])[:, None].expand(3, 2).clone(),
        }
        arrays = {HEADS: state_to_record(heads), DOMAIN: state_to_record(domain, fp16=False)}
        return _answer(
            content,
            CalibrateReply(TRAIN[site], 0.1, 0.0, confidence_loss=0.1, anomaly_loss=0.1),
            **arrays,
        )

    run, state, _ = _run(tmp_path, respond, sites=("A", "B", "C"))
    before = _frozen_state(run, state)
    assert not before.decoder.has_domain
    after = run.run(CALIBRATE, before)
    assert after.calibration.calibrated and after.decoder.has_domain
    assert "C" in run.ledger.rejected
    got = after.decoder.domain_thresholds[:, 0].tolist()
    assert got == pytest.approx([0.2, 0.3, 0.5])  # medians over the sites that have the row
    kept = {int(row.argmax()) for row in after.decoder.domain_centroids[0]}
    assert kept == set(range(4 + SITE_CENTROIDS))  # both sites' kinds, each once or more
    assert {int(row.argmax()) for row in after.decoder.domain_centroids[2]} == set(range(4, 12))


def test_evaluation_pools_bounded_sums_and_registration_exports(tmp_path):
    sums = {
        "A": {"liver": (0.8, 1)},
        "B": {"liver": (0.8, 1), "spleen": (0.5, 1)},
        "C": {"liver": (1000.0, 1)},  # a Dice sum no case count can give
    }

    def respond(site, kind, content):
        assert kind == "evaluate"
        scores = ScoreSums()
        for structure, (total, n) in sums[site].items():
            scores.dice[structure] = [total, float(n)]
        return _answer(content, EvaluateReply(1, scores=scores))

    run, state, _ = _run(tmp_path, respond, sites=("A", "B", "C"))
    state = _frozen_state(run, state)
    after = run.run(EVALUATE, state)
    assert after.metrics["dice"] == {"liver": pytest.approx(0.8), "spleen": pytest.approx(0.5)}
    assert after.metrics["validation_cases"] == 2 and "outside" in run.ledger.rejected["C"]
    steps = [s.name for s in lifecycle(run.task, first_task=False)]
    assert steps == ["teacher", "search", "distill", "calibrate", "evaluate", "peers", "register"]
    run.run(Registration(steps[:-2]), after)
    version = run.catalog.tasks()[0]["versions"][0]
    assert version["provenance"]["rounds"]["teacher"] == 2
    assert version["metrics"]["dice"]["liver"] == pytest.approx(0.8)
    assert (run.catalog.root / "bundle" / "manifest.json").is_file()


def test_a_tasks_sites_score_the_earlier_decoders_it_shares_structures_with(tmp_path):
    seen = []

    def respond(site, kind, content):
        assert kind == "evaluate"
        cfg = RoundConfig.from_record(content[CONFIG])
        seen.append((site, cfg.structures, cfg.labels))
        scores = ScoreSums()
        scores.dice["liver"] = [0.6, 1.0]
        scores.dice["kidney_left"] = [0.9, 1.0]  # scored, but not one of the task's
        return _answer(content, EvaluateReply(1, scores=scores))

    run, state, _ = _run(tmp_path, respond)
    state = _frozen_state(run, state)
    for name, structures in (("organs", ("liver", "kidney_left")), ("head", ("brain",))):
        decoder = Decoder(TINY.widths, Genotype.teacher(len(TINY.widths) - 1), structures)
        run.catalog.register(name, decoder, {}, {})
    after = run.run(PeerSkills(), state)
    # the peer decoder's structures, scored on the task's own dataset; the head decoder
    # shares nothing with the task and is not sent
    assert seen == [(s, ("liver", "kidney_left"), ("liver", "spleen")) for s in ("A", "B")]
    assert after.calibration.peers == {"organs": {"liver": pytest.approx(0.6)}}
    run.run(Registration([]), after)
    stored = run.catalog.tasks()[-1]["versions"][0]["calibration"]["peers"]
    assert stored == {"organs": {"liver": 0.6}}
    restored = run.run(PeerSkills(), state)  # finished before: from the journal
    assert restored.calibration.peers == after.calibration.peers and len(seen) == 2


def test_a_peer_round_that_fails_leaves_that_decoder_unscored(tmp_path):
    def respond(site, kind, content):
        return Reply(_sites(site)[0], None, "Node Unavailable")

    run, state, _ = _run(tmp_path, respond, training={"rejoin_grace_s": 0})
    state = _frozen_state(run, state)
    decoder = Decoder(TINY.widths, Genotype.teacher(len(TINY.widths) - 1), ("liver",))
    run.catalog.register("organs", decoder, {}, {})
    assert run.run(PeerSkills(), state).calibration.peers == {}
    assert any(e["event"] == "peer-skipped" for e in run.catalog.events())


def test_what_a_round_sends_is_bounded_on_arrival(tmp_path):
    seen = []

    def respond(site, kind, content):
        seen.append(RoundConfig.from_record(content[CONFIG]))
        template = {k: torch.zeros(tuple(a.shape)) for k, a in content[DECODER].items()}
        state = record_to_state(content[DECODER], template, "x")
        return _answer(content, SiteReply(TRAIN[site]), **{DECODER: state_to_record(state)})

    run, state, _ = _run(tmp_path, respond)
    run.run(TEACHER, _frozen_state(run, state))
    assert [c.round for c in seen] == [1, 1, 2, 2] and seen[0].task == "abdomen"
    assert seen[0].encoder_sha256 == run.catalog.index["encoder"]["weights_sha256"]


def test_a_bounded_plan_keeps_one_hostile_site_from_steering_the_average(tmp_path):
    def respond(site, kind, content):
        delta = 1000.0 if site == "D" else 0.01 * (ord(site) - ord("A") - 1)
        reply = SiteReply(TRAIN[site], 0.1)
        return _answer(content, reply, **{DECODER: _shifted(content, DECODER, delta)})

    sites = ("A", "B", "C", "D")
    for rule, near in (("clipped", True), ("robust", True), ("fedavg", False)):
        run, state, _ = _run(tmp_path / rule, respond, sites=sites, aggregation=rule, rounds=1)
        state = _frozen_state(run, state)
        after = run.run(TEACHER, state)
        shift = max(
            float((after.decoder.state_dict()[k] - v).abs().max())
            for k, v in state.decoder.state_dict().items()
        )
        assert (shift < 0.1) is near, (rule, shift)
        ends = [e for e in run.catalog.events() if e["event"] == "round-end"]
        assert list(ends[0]["clipped"]) == (["D"] if near else []), rule  # journalled


def test_a_server_optimizer_steps_from_what_each_round_sent(tmp_path):
    def respond(site, kind, content):  # every site moves every weight by +1, each round
        reply = SiteReply(TRAIN[site], 0.1)
        return _answer(content, reply, **{DECODER: _shifted(content, DECODER, 1.0)})

    settings = {"server_lr": 2.0, "server_momentum": 0.5}
    run, state, federation = _run(tmp_path, respond, rounds=2, **settings)
    state = _frozen_state(run, state)
    after = run.run(TEACHER, state)
    template = state.decoder.state_dict()
    sent = [record_to_state(c[DECODER], template, "sent") for *_, c in federation.sent]
    for name, value in state.decoder.state_dict().items():
        if value.is_floating_point():  # round 1: +2 x 1; round 2: +2 x (0.5 x 1 + 1)
            assert torch.allclose(sent[-1][name], value + 2.0, atol=1e-2), name
            assert torch.allclose(after.decoder.state_dict()[name], value + 5.0, atol=1e-2), name


def test_only_the_phases_that_train_weights_over_rounds_take_the_server_optimizer():
    stepped = {
        p.name for p in (BASE, TEACHER, SEARCH, DISTILL, CALIBRATE, EVALUATE) if p.server_optimized
    }
    assert stepped == {"base", "teacher", "distill"}


@pytest.mark.parametrize("server", [{}, {"server_lr": 2.0, "server_momentum": 0.5}])
def test_a_resumed_run_continues_the_phase_in_flight_from_its_last_finished_round(tmp_path, server):
    def respond(site, kind, content):  # every site moves every weight by +1, each round
        if RoundConfig.from_record(content[CONFIG]).round in stop_at:
            raise RuntimeError("the server stopped")
        return _answer(
            content, SiteReply(TRAIN[site], 0.1), **{DECODER: _shifted(content, DECODER, 1.0)}
        )

    def run_teacher(folder):
        run, state, federation = _run(folder, respond, rounds=4, **server)
        return run.run(TEACHER, _frozen_state(run, state)).decoder.state_dict(), run, federation

    stop_at: set[int] = set()
    straight, _, _ = run_teacher(tmp_path / "straight")
    stop_at.add(3)
    with pytest.raises(RuntimeError, match="stopped"):
        run_teacher(tmp_path / "stopped")
    stop_at.clear()
    resumed, run, federation = run_teacher(tmp_path / "stopped")
    assert [RoundConfig.from_record(c[CONFIG]).round for *_, c in federation.sent] == [3, 3, 4, 4]
    assert all(torch.allclose(resumed[k], v, atol=1e-5) for k, v in straight.items())
    restored = [e["round"] for e in run.catalog.events() if e["event"] == "round-restored"]
    assert restored == [1, 2]
    assert not list((tmp_path / "stopped/catalog/checkpoints/abdomen").glob("teacher.round*"))
    assert run.ledger.bytes_up["A"] > 0


def test_kept_rounds_given_other_inputs_are_sent_again(tmp_path):
    def respond(site, kind, content):
        if RoundConfig.from_record(content[CONFIG]).round == 2 and stop:
            raise RuntimeError("the server stopped")
        return _answer(
            content, SiteReply(TRAIN[site], 0.1), **{DECODER: _shifted(content, DECODER, 1.0)}
        )

    stop = True
    run, state, _ = _run(tmp_path, respond, rounds=2)
    with pytest.raises(RuntimeError):
        run.run(TEACHER, _frozen_state(run, state))
    stop = False
    run, state, federation = _run(tmp_path, respond, rounds=2, lr=0.5)  # the plan changed
    run.run(TEACHER, _frozen_state(run, state))
    assert [RoundConfig.from_record(c[CONFIG]).round for *_, c in federation.sent] == [1, 1, 2, 2]


def test_a_private_task_keeps_each_site_s_spent_epsilon_in_its_provenance(tmp_path):
    spent = {"A": 1.5, "B": 2.5}

    def respond(site, kind, content):
        assert kind == "train.teacher"
        reply = SiteReply(TRAIN[site], 0.0, 1.0, spent[site])  # under DP: no loss
        return _answer(content, reply, **{DECODER: _shifted(content, DECODER, 0)})

    dp = {"trim": False, "calibrate": False, "dp_noise_multiplier": 1.0, "dp_delta": 1e-4}
    run, state, _ = _run(tmp_path, respond, **dp)
    # the validation patients' scores would leave the sites without noise: not evaluated
    steps = [s.name for s in lifecycle(run.task, first_task=False)]
    assert steps == ["teacher", "register"]
    trimmed = replace(run.task, section=replace(run.task.section, trim=True))
    assert "evaluate" not in [s.name for s in lifecycle(trimmed, first_task=False)]
    run.run(Registration(steps[:-1]), run.run(TEACHER, _frozen_state(run, state)))
    version = run.catalog.tasks()[0]["versions"][0]
    assert version["provenance"][PRIVACY] == {"delta": 1e-4, "epsilon": spent}
    assert version["metrics"] == {}
    manifest = json.loads((run.catalog.root / "bundle" / "manifest.json").read_text())
    assert manifest["decoders"][0]["provenance"][PRIVACY] == {"delta": 1e-4, "epsilon": spent}
