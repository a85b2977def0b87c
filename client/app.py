"""The hospital ClientApp: describe the site, train a phase, evaluate; reply with weights only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from client.site import Site
from core.calibration import calibrate_phase
from core.data import split_cases
from core.evaluation import evaluate_task
from core.model import ContinualSegmenter, Decoder, Encoder, Genotype
from core.model.distill import distill_phase
from core.model.search import SearchSettings, SuperNet, search_phase
from core.payload import record_to_state, state_to_record
from core.protocol import (
    ARCH,
    CONFIG,
    DECODER,
    ENCODER,
    ENCODER_SHA,
    HEADS,
    METRICS,
    TEACHER,
    RoundConfig,
)
from core.training import Phase, train_phase

app = ClientApp()


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server the site's name, datasets (structures, case counts) and cached encoders."""
    return Message(Site.from_context(context).describe(), reply_to=msg)


def _model(site: Site, cfg: RoundConfig, content: RecordDict) -> ContinualSegmenter:
    """Encoder and the task's decoder, loaded from the message (and the encoder cache)."""
    sent = content.array_records.get(ENCODER)
    if cfg.phase == Phase.BASE:  # the encoder is still learning: it comes every round
        if sent is None:
            raise ValueError("base phase: the message carries no encoder")
        encoder = Encoder(cfg.encoder)
        encoder.load_state_dict(
            record_to_state(sent, encoder.state_dict(), f"{site.name}: encoder")
        )
    else:
        encoder = site.encoder(cfg.encoder_sha256, cfg.encoder, sent)
    decoder = Decoder(cfg.encoder.widths, cfg.genotype, cfg.structures)
    record = content.array_records[DECODER]
    decoder.load_state_dict(record_to_state(record, decoder.state_dict(), f"{site.name}: decoder"))
    model = ContinualSegmenter(encoder)
    model.add_decoder(cfg.task, decoder)
    return model


def train_reply(site: Site, cfg: RoundConfig, content: RecordDict) -> RecordDict:
    """Train one round locally; the reply holds weights and aggregate metrics only."""
    dataset = site.dataset_for(cfg.structures)
    train, _ = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    model = _model(site, cfg, content)
    phase = Phase(cfg.phase)
    settings = cfg.train_settings()
    result = train_phase(
        model, cfg.task, phase, dataset.labels, train, [], cfg.preprocessing, settings
    )
    reply = RecordDict()
    reply[DECODER] = state_to_record(model.decoder(cfg.task).state_dict())
    if phase == Phase.BASE:
        reply[ENCODER] = state_to_record(model.encoder.state_dict())
    reply[CONFIG] = ConfigRecord({ENCODER_SHA: cfg.encoder_sha256})
    tail = result.losses[-max(1, len(result.losses) // 4) :]
    reply[METRICS] = MetricRecord(
        {"num-examples": len(train), "loss": float(np.mean(tail)), "seconds": result.seconds}
    )
    return reply


def search_reply(site: Site, cfg: RoundConfig, content: RecordDict) -> RecordDict:
    """Search the task's decoder architecture locally; only alpha and beta leave the site.

    The supernet's weights stay in the site's cache between rounds: they are trained on
    private data and are not needed elsewhere.
    """
    dataset = site.dataset_for(cfg.structures)
    train, _ = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    encoder = site.encoder(cfg.encoder_sha256, cfg.encoder, content.array_records.get(ENCODER))
    torch.manual_seed(cfg.seed)
    supernet = SuperNet(cfg.encoder.widths, cfg.structures)
    site.load_local(f"supernet-{cfg.task}", supernet)
    arch = content.array_records[ARCH]
    template = {"alpha": supernet.alpha.detach(), "beta": supernet.beta.detach()}
    values = record_to_state(arch, template, f"{site.name}: arch")
    with torch.no_grad():
        supernet.alpha.copy_(values["alpha"])
        supernet.beta.copy_(values["beta"])
    settings = SearchSettings(cfg.train_settings(), max(cfg.budget_params, 1))
    result = search_phase(encoder, supernet, dataset.labels, train, cfg.preprocessing, settings)
    site.save_local(f"supernet-{cfg.task}", supernet)
    arch_state = {"alpha": supernet.alpha.detach(), "beta": supernet.beta.detach()}
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": len(train),
        "loss": float(np.mean(result.weight_losses[-5:])),
        "expected-parameters": result.expected_parameters[-1]
        if result.expected_parameters
        else 0.0,
        "seconds": result.seconds,
    }
    return RecordDict(
        {
            ARCH: state_to_record(arch_state, fp16=False),
            METRICS: MetricRecord(metrics),
            CONFIG: ConfigRecord({ENCODER_SHA: cfg.encoder_sha256}),
        }
    )


def distill_reply(site: Site, cfg: RoundConfig, content: RecordDict) -> RecordDict:
    """Train the student (``cfg.genotype``) from labels and the teacher; reply its weights."""
    dataset = site.dataset_for(cfg.structures)
    train, _ = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    encoder = site.encoder(cfg.encoder_sha256, cfg.encoder, content.array_records.get(ENCODER))
    widths = cfg.encoder.widths
    teacher = Decoder(widths, Genotype.teacher(len(widths) - 1), cfg.structures)
    sent = content.array_records[TEACHER]
    teacher.load_state_dict(record_to_state(sent, teacher.state_dict(), f"{site.name}: teacher"))
    student = Decoder(widths, cfg.genotype, cfg.structures)
    sent = content.array_records[DECODER]
    student.load_state_dict(record_to_state(sent, student.state_dict(), f"{site.name}: student"))
    model = ContinualSegmenter(encoder)
    model.add_decoder(cfg.task, teacher)
    result = distill_phase(
        model,
        cfg.task,
        student,
        dataset.labels,
        train,
        cfg.preprocessing,
        cfg.train_settings(),
        cfg.kd_weight,
        cfg.temperature,
    )
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": len(train),
        "loss": float(np.mean(result.losses[-5:])),
        "kd-loss": float(np.mean(result.kd_losses[-5:])),
        "seconds": result.seconds,
    }
    return RecordDict(
        {
            DECODER: state_to_record(student.state_dict()),
            METRICS: MetricRecord(metrics),
            CONFIG: ConfigRecord({ENCODER_SHA: cfg.encoder_sha256}),
        }
    )


def calibrate_reply(site: Site, cfg: RoundConfig, content: RecordDict) -> RecordDict:
    """Train the decoder's calibration head; reply that head and the cases' body-part range."""
    dataset = site.dataset_for(cfg.structures)
    train, _ = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    model = _model(site, cfg, content)
    result = calibrate_phase(
        model, cfg.task, dataset.labels, train, cfg.preprocessing, cfg.train_settings()
    )
    heads = model.decoder(cfg.task).calibration_head.state_dict()
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": len(train),
        "loss": float(np.mean(result.losses[-5:])),
        "confidence-loss": float(np.mean(result.confidence_losses[-5:])),
        "anomaly-loss": float(np.mean(result.anomaly_losses[-5:])),
        "seconds": result.seconds,
    }
    if result.body_range is not None:
        metrics |= {"body-lo": result.body_range.lo, "body-hi": result.body_range.hi}
    return RecordDict(
        {
            HEADS: state_to_record({f"calibration_head.{k}": v for k, v in heads.items()}),
            METRICS: MetricRecord(metrics),
            CONFIG: ConfigRecord({ENCODER_SHA: cfg.encoder_sha256}),
        }
    )


def evaluate_reply(site: Site, cfg: RoundConfig, content: RecordDict) -> RecordDict:
    """Dice and HD95 per structure on the site's validation cases, as pooled sums only."""
    dataset = site.dataset_for(cfg.structures)
    _, val = split_cases(dataset.cases, cfg.val_fraction, cfg.seed)
    model = _model(site, cfg, content)
    scores = evaluate_task(model, cfg.task, val, dataset.labels, cfg.preprocessing, cfg.patch)
    metrics = MetricRecord({"num-examples": len(val), **scores.to_flat()})
    return RecordDict({METRICS: metrics, CONFIG: ConfigRecord({ENCODER_SHA: cfg.encoder_sha256})})


def _handle(
    msg: Message, context: Context, handler: Callable[[Site, RoundConfig, RecordDict], RecordDict]
) -> Message:
    Site.threads(context)
    cfg = RoundConfig.from_record(msg.content.config_records[CONFIG])
    return Message(handler(Site.from_context(context), cfg, msg.content), reply_to=msg)


@app.train("base")
def train_base(msg: Message, context: Context) -> Message:
    """First task only: train the encoder and the decoder together."""
    return _handle(msg, context, train_reply)


@app.train("teacher")
def train_teacher(msg: Message, context: Context) -> Message:
    """Train the task's full decoder on the frozen encoder."""
    return _handle(msg, context, train_reply)


@app.train("search")
def train_search(msg: Message, context: Context) -> Message:
    """Search the decoder's architecture under the size budget."""
    return _handle(msg, context, search_reply)


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    """Distil the teacher into the searched student."""
    return _handle(msg, context, distill_reply)


@app.train("calibrate")
def train_calibrate(msg: Message, context: Context) -> Message:
    """Train the decoder's confidence and anomaly heads; measure the body-part range."""
    return _handle(msg, context, calibrate_reply)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the task's decoder on the site's validation cases."""
    return _handle(msg, context, evaluate_reply)
