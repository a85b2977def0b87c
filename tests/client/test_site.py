from dataclasses import replace
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from client.site import Site, SiteError
from core.model import Decoder, Encoder, Genotype
from core.payload import state_to_record
from core.phases import EVALUATE, TEACHER
from core.phases.spec import NoSettings
from core.phases.training import TrainingSettings
from core.protocol import CONFIG, DECODER, ENCODER, METRICS, RoundConfig
from tests.models import PATCH, TINY, native_prep


def _context(node=None, run=None):
    return Context(
        run_id=1, node_id=1, node_config=node or {}, state=RecordDict(), run_config=run or {}
    )


def test_site_from_node_config_and_from_simulation(tmp_path):
    site = Site.from_context(_context({"site": "hospA", "data-dir": str(tmp_path)}))
    assert (
        site.name == "hospA"
        and site.data_dir == tmp_path
        and site.cache_dir == tmp_path / ".csfl-cache"
    )
    sim = Site.from_context(
        _context(
            {"partition-id": 1, "num-partitions": 2},
            {"sim-sites": "hospA,hospB", "sim-data-root": str(tmp_path)},
        )
    )
    assert sim.name == "hospB" and sim.data_dir == tmp_path / "hospB"
    assert sim.cache_dir == tmp_path / "hospB" / ".csfl-cache"
    run = {"sim-sites": "hospA,hospB", "sim-data-root": "/s", "sim-cache-root": "/run/caches"}
    sim = Site.from_context(_context({"partition-id": 0, "num-partitions": 2}, run))
    assert sim.cache_dir == Path("/run/caches/hospA")  # a run's own, not the phantoms'.
    assert sim.max_epsilon == 0.0  # no limit of its own
    node = {"site": "hospA", "data-dir": str(tmp_path), "max-epsilon": "4"}
    assert Site.from_context(_context(node)).privacy_ledger.ceiling == 4.0
    with pytest.raises(SiteError, match=r"max-epsilon 'lots': expected a number in \[0, 1000\]"):
        Site.from_context(_context({**node, "max-epsilon": "lots"}))
    with pytest.raises(SiteError, match="data-dir"):
        Site.from_context(_context())


def test_describe_says_only_structures_and_counts(tiny_sites):
    written = tiny_sites["hospA"]
    site = Site("hospA", written.dataset.root.parent, written.dataset.root.parent / ".cache")
    record = site.describe()
    assert record["site"]["name"] == "hospA" and record["site"]["datasets"] == 1
    assert list(record["dataset-0"]["structures"]) == list(written.dataset.labels.structures)
    assert record["dataset-0"]["cases"] == 3
    assert "hospA_000" not in repr(record)  # no case identifiers
    with pytest.raises(SiteError, match="no dataset labels"):
        site.dataset_for(("heart",))


def test_encoder_is_cached_once_and_checked(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(TINY).freeze()
    sha = encoder.weights_sha256()
    site = Site("hospA", tmp_path, tmp_path / "cache")
    with pytest.raises(SiteError, match="neither sent nor cached"):
        site.encoder(sha, TINY, None)
    got = site.encoder(sha, TINY, state_to_record(encoder.state_dict(), fp16=False))
    assert got.weights_sha256() == sha and got.frozen
    assert site.encoder(sha, TINY, None).weights_sha256() == sha  # from the cache now
    with pytest.raises(SiteError, match="does not hash"):
        site.encoder(sha, TINY, state_to_record(encoder.state_dict()))  # fp16 changes the hash
    cached = tmp_path / "cache" / f"encoder-{sha}.safetensors"
    other = Encoder(TINY)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, cached)
    with pytest.raises(SiteError, match="corrupt"):
        site.encoder(sha, TINY, None)
    assert not cached.exists()


def _teacher_round(dataset, encoder, **more):
    """A teacher round of the tiny network on ``dataset``'s structures."""
    return RoundConfig(
        task="abdomen",
        phase="teacher",
        structures=dataset.labels.structures,
        genotype=Genotype.teacher(3),
        encoder=TINY,
        encoder_sha256=encoder.weights_sha256(),
        preprocessing=native_prep(dataset),
        patch=PATCH,
        val_fraction=0.34,
        **more,
    )


def test_what_leaves_a_site_is_weights_and_aggregates_only(tiny_sites):
    written = tiny_sites["hospA"]
    dataset = written.dataset
    site = Site("hospA", dataset.root.parent, dataset.root.parent / ".cache-wire")
    torch.manual_seed(0)
    encoder = Encoder(TINY).freeze()
    decoder = Decoder(TINY.widths, Genotype.teacher(3), dataset.labels.structures)
    cfg = _teacher_round(dataset, encoder)
    train = TrainingSettings(rounds=1, steps=2)
    content = RecordDict(
        {
            CONFIG: cfg.to_record(),
            DECODER: state_to_record(decoder.state_dict()),
            ENCODER: state_to_record(encoder.state_dict(), fp16=False),
        }
    )
    for reply in (
        TEACHER.at_site(site, cfg, train, content),
        EVALUATE.at_site(site, cfg, NoSettings(), content),
    ):
        for record in reply.array_records.values():
            for name, array in record.items():
                if name.startswith("domain_"):  # the calibrate phase's: never filled here
                    assert not array.numpy().any(), name
                    continue
                # Weights are vectors or (out, in, k, k, k) kernels with k <= 3; an image,
                # label map or feature map would have larger spatial axes.
                spatial = array.shape[-3:] if len(array.shape) >= 3 else ()
                assert all(side <= 3 for side in spatial), (name, array.shape)
        text = repr(reply.config_records) + repr(reply.metric_records)
        assert "hospA_0" not in text and str(dataset.root) not in text
    assert set(TEACHER.at_site(site, cfg, train, content).array_records) == {DECODER}
    metrics = EVALUATE.at_site(site, cfg, NoSettings(), content)[METRICS]
    assert metrics["examples"] == 1 and any(k.startswith("dice-sum/") for k in metrics)


def test_a_peer_round_scores_another_tasks_decoder_on_the_tasks_own_dataset(tiny_sites):
    dataset = tiny_sites["hospA"].dataset  # abdomen: liver, spleen, kidneys
    site = Site("hospA", dataset.root.parent, dataset.root.parent / ".cache-peer")
    torch.manual_seed(0)
    encoder = Encoder(TINY).freeze()
    peer = Decoder(TINY.widths, Genotype.teacher(3), ("heart", "liver"))  # a chest decoder
    cfg = replace(
        _teacher_round(dataset, encoder),
        phase="evaluate",
        structures=peer.structures,
        labels=dataset.labels.structures,
    )
    content = RecordDict(
        {
            CONFIG: cfg.to_record(),
            DECODER: state_to_record(peer.state_dict()),
            ENCODER: state_to_record(encoder.state_dict(), fp16=False),
        }
    )
    metrics = EVALUATE.at_site(site, cfg, NoSettings(), content)[METRICS]
    scored = {k.split("/")[1] for k in metrics if k.startswith("dice-sum/")}
    assert scored == {"liver"}  # the shared structure; the site labels no heart
    assert metrics["examples"] == 1
    with pytest.raises(SiteError, match="no dataset labels"):  # labels pick the dataset
        EVALUATE.at_site(site, replace(cfg, labels=("heart",)), NoSettings(), content)


@pytest.mark.slow  # a step or two of each phase of the tiny network under DP-SGD
def test_a_private_task_trains_every_phase_privately_and_the_site_counts_it(tiny_sites):
    from dataclasses import replace

    from core.local.private import Privacy, spent_epsilon
    from core.model.supernet import SuperNet
    from core.phases import CALIBRATE, DISTILL, SEARCH
    from core.phases.calibrate import CalibrateSettings
    from core.phases.distill import DistillSettings
    from core.phases.search import SearchSettings, arch_state
    from core.protocol import ARCH, DOMAIN
    from core.protocol import TEACHER as TEACHER_RECORD

    dataset = tiny_sites["hospA"].dataset
    site = Site("hospA", dataset.root.parent, dataset.root.parent / ".cache-private")
    torch.manual_seed(0)
    encoder = Encoder(TINY).freeze()
    structures = dataset.labels.structures
    teacher = Decoder(TINY.widths, Genotype.teacher(3), structures)
    student = Genotype.from_json({"stages": [{"op": "p3d", "width": 0.5}] * 3})
    privacy = Privacy(noise_multiplier=1.0, max_grad_norm=1.0, delta=0.01)
    cfg = _teacher_round(dataset, encoder, privacy=privacy)
    weights = {
        ENCODER: state_to_record(encoder.state_dict(), fp16=False),
        DECODER: state_to_record(teacher.state_dict()),
    }
    rounds = [
        (TEACHER, cfg, TrainingSettings(rounds=1, steps=2), weights),
        (SEARCH, replace(cfg, phase="search"), SearchSettings(steps=2),
         {ARCH: state_to_record(arch_state(SuperNet(TINY.widths, structures)), fp16=False)}),
        (DISTILL, replace(cfg, phase="distill", genotype=student), DistillSettings(steps=2),
         {**weights, TEACHER_RECORD: weights[DECODER],
          DECODER: state_to_record(Decoder(TINY.widths, student, structures).state_dict())}),
        (CALIBRATE, replace(cfg, phase="calibrate"), CalibrateSettings(steps=2), weights),
    ]  # fmt: skip
    spent = []
    for phase, round_cfg, settings, records in rounds:
        content = RecordDict({CONFIG: round_cfg.to_record(), **records})
        reply = phase.at_site(site, round_cfg, settings, content)
        metrics = reply[METRICS]
        assert metrics["loss"] == 0.0  # a loss is not private
        spent.append(metrics["epsilon"])
        if phase is DISTILL:  # the student learnt
            sent = records[DECODER]
            assert any((v.numpy() != sent[k].numpy()).any() for k, v in reply[DECODER].items())
        if phase is CALIBRATE:  # the domain is not private: none is sent
            assert not any(a.numpy().any() for a in reply[DOMAIN].values())
    assert 0 < spent[0] < spent[1] < spent[2] < spent[3]  # the phases compose
    ledger = site.privacy_ledger
    assert spent[-1] == pytest.approx(spent_epsilon(ledger.history("abdomen"), 0.01))
    # 2 training patients, batch 2: every step samples each with rate 1; the search
    # trains its weights on one patient and, after its warm-up, its architecture on the other
    teacher_steps, search_weights, search_arch, distill, calibrate = ledger.history("abdomen")
    assert teacher_steps == distill == calibrate == search_weights == (1.0, 1.0, 2)
    assert search_arch == (1.0, 1.0, 1)
    # the server cannot reset the count: the same round again spends again, and a budget
    # the next round would pass is refused before it trains
    again = TEACHER.at_site(site, cfg, TrainingSettings(rounds=1, steps=2), content)
    assert again[METRICS]["epsilon"] > spent[-1]
    capped = replace(cfg, privacy=replace(privacy, epsilon_budget=again[METRICS]["epsilon"]))
    with pytest.raises(ValueError, match="privacy budget"):
        TEACHER.at_site(site, capped, TrainingSettings(rounds=1, steps=2), content)
    # a site that insists on DP trains and scores nothing of a task without it
    strict = replace(site, max_epsilon=100.0)
    plain = replace(cfg, privacy=Privacy())
    with pytest.raises(ValueError, match="trains only under differential privacy"):
        TEACHER.at_site(strict, plain, TrainingSettings(rounds=1, steps=2), content)
    with pytest.raises(ValueError, match="validation scores are not sent"):
        EVALUATE.at_site(site, replace(cfg, phase="evaluate"), NoSettings(), content)
