"""The task plan (TOML): the model, the tasks in order, which sites serve each, budgets.

```toml
[model]
encoder_widths = [8, 16, 32, 64, 128]
patch = [64, 64, 64]

[training]
batch_size = 2

[[tasks]]
name = "abdomen"
structures = ["liver", "spleen", "kidney_left", "kidney_right"]
sites = ["hospA", "hospB"]   # or "any": every site whose data labels these structures
rounds = 3
local_steps = 50
trim = true            # search a compact student and distil the teacher into it
calibrate = true       # train the confidence and anomaly heads, learn the decoder's domain
```

Every key, its default, bounds and meaning are declared once, in the record classes below
and in each phase's settings (``core.phases``), and the documentation's plan reference is
generated from them; an unknown key is an error that names the nearest known one.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core import anatomy
from core.data.transforms import Preprocessing
from core.describe import check_structures
from core.device import DEFAULT_PRECISION, check_precision
from core.local.private import Privacy
from core.local.training import LocalTrainSettings
from core.model import EncoderConfig, check_task_name
from core.phases import PHASES, TEACHER, PhaseSettings, PhaseSpec
from core.phases.training import TrainingSettings
from core.protocol import Optimiser, local_settings
from core.records import Record, RecordError, check_unknown, flat, keys_of, parse, setting

S = TypeVar("S", bound=PhaseSettings)


class PlanError(ValueError):
    """A plan that cannot run; the message names the file and field."""


@dataclass(frozen=True)
class ModelSection(Record):
    """``[model]``: the encoder, the patch and the preprocessing."""

    encoder_widths: tuple[int, ...] = setting(
        (8, 16, 32, 64, 128),
        lo=1,
        hi=1024,
        doc="channels of the shared encoder's stages (one per stage; sets the depth)",
    )
    patch: tuple[int, int, int] = setting(
        (64, 64, 64),
        lo=8,
        hi=256,
        doc="training patch and sliding-window size, voxels (multiples of the encoder's divisor)",
    )
    spacing_mm: tuple[float, float, float] = setting(
        (1.5, 1.5, 1.5),
        lo=0.05,
        hi=50.0,
        doc="every CT is resampled to this voxel spacing (x, y, z)",
    )
    hu_window: tuple[float, float] = setting(
        (-1000.0, 1000.0),
        lo=-4000.0,
        hi=30000.0,
        doc="Hounsfield units mapped linearly onto [0, 1], clipped outside (low, high)",
    )

    def __post_init__(self) -> None:
        encoder = EncoderConfig(self.encoder_widths)
        if any(side % encoder.divisor for side in self.patch):
            raise ValueError(
                f"patch {list(self.patch)}: sides must be multiples of {encoder.divisor}"
            )
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window {list(self.hu_window)}: expected low < high")


@dataclass(frozen=True)
class TrainingSection(Record):
    """``[training]``: what every task shares."""

    batch_size: int = setting(
        2, lo=1, hi=64, doc="patches per local step (every task, every phase)"
    )
    val_fraction: float = setting(
        0.2, lo=0.01, hi=0.99, doc="share of a site's cases kept apart for its own validation"
    )
    seed: int = setting(
        0, lo=0, hi=2**31 - 1, doc="seed of every site's data split, sampling and initialisation"
    )
    max_payload_mb: float = setting(
        256.0, lo=1.0, hi=4096.0, doc="largest reply the server accepts from a site"
    )
    precision: str = setting(
        DEFAULT_PRECISION, lo=1, hi=8, doc='"auto", "fp32" or "bf16" (training)'
    )
    rejoin_grace_s: float = setting(
        600.0,
        lo=0.0,
        hi=86400.0,
        doc="how long a round short of sites waits for planned sites to come back online",
    )
    partial_runs: bool = setting(
        False,
        doc="a run that skips a task, or trains one without a site the plan names, still "
        "completes (else it fails after keeping what it trained)",
    )

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class TaskSection(Record):
    """A task's own keys besides its sites, optimiser and phase settings."""

    name: str = setting(
        lo=1, hi=64, doc="the task's name (a file-safe identifier, unique in the plan)"
    )
    structures: tuple[str, ...] = setting(
        lo=1, hi=64, doc="the structures its decoder segments (names of core.anatomy)"
    )
    min_sites: int = setting(1, lo=1, hi=1000, doc="the fewest usable site replies a round needs")
    trim: bool = setting(True, doc="search and distil a compact student")
    calibrate: bool = setting(
        True, doc="train the confidence and anomaly heads, learn the decoder's domain"
    )
    partial_labels: bool = setting(False, doc="sites may label only some structures")

    def __post_init__(self) -> None:
        if self.partial_labels and (self.trim or self.calibrate):
            raise ValueError(
                "partial_labels: trimming and calibration need every structure labelled at "
                "every site; set trim = false and calibrate = false"
            )


AGGREGATION_RULES = ("clipped", "robust", "fedavg")
SERVER_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class AggregationSettings(Record):
    """How a task's rounds are averaged (``server.aggregate``, ``server.robust``).

    A site's weight is the size of its training split as its ``describe`` case count
    implies, at most ``max_site_cases``. ``clipped`` (the default) bounds each site's update
    by ``norm_bound`` x the round's median update norm, then takes the weighted mean, so no
    site moves the average further than the bound; ``robust`` also takes, with 3 sites or
    more, the coordinate-wise mean trimmed by ``trim_fraction`` (at least one site per
    side); ``fedavg`` is the plain weighted mean, unbounded. In the
    phases that train weights over rounds (base, teacher, distill) the server then steps
    the global model towards that average (``server.server_optimizer``): ``sgd`` at
    ``server_lr`` 1 without momentum is plain FedAvg, with momentum FedAvgM, ``adam``
    FedAdam.
    """

    aggregation: str = setting(
        "clipped", lo=1, hi=16, doc='"clipped", "robust" or "fedavg" (unbounded)'
    )
    norm_bound: float = setting(
        3.0,
        lo=1.0,
        hi=1000.0,
        doc="clipped/robust: largest update, in multiples of the round's median update norm",
    )
    trim_fraction: float = setting(
        0.2,
        lo=0.0,
        hi=0.45,
        doc="robust: share of sites trimmed at each end, per coordinate (3 sites or more)",
    )
    max_site_cases: int = setting(
        10_000,
        lo=1,
        hi=1_000_000,
        doc="a site's aggregation weight (its training cases) is capped here",
    )
    server_optimizer: str = setting("sgd", lo=1, hi=16, doc='"sgd" or "adam"')
    server_lr: float = setting(1.0, lo=1e-4, hi=10.0, doc="the server's step on the average")
    server_momentum: float = setting(0.0, lo=0.0, hi=0.99, doc="sgd's momentum (FedAvgM)")

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATION_RULES:
            raise ValueError(
                f"aggregation {self.aggregation!r}: expected one of {AGGREGATION_RULES}"
            )
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"server_optimizer {self.server_optimizer!r}: expected one of {SERVER_OPTIMIZERS}"
            )
        if self.server_optimizer == "adam" and self.server_momentum:
            raise ValueError("server_momentum: sgd's setting; adam keeps its own moments")


@dataclass(frozen=True)
class TaskPlan:
    """One task: its keys, its sites (``None``: any that labels them) and its settings."""

    section: TaskSection
    sites: tuple[str, ...] | None
    optimiser: Optimiser
    aggregation: AggregationSettings
    phase_settings: Mapping[str, PhaseSettings]
    privacy: Privacy

    @property
    def name(self) -> str:
        """The task's name (a file-safe identifier)."""
        return self.section.name

    @property
    def structures(self) -> tuple[str, ...]:
        """The structures its decoder segments."""
        return self.section.structures

    def of(self, phase: PhaseSpec[S, Any]) -> S:
        """The task's settings of ``phase``."""
        return self.phase_settings[phase.name]  # type: ignore[return-value]

    def with_phase(self, phase: PhaseSpec[Any, Any], **changes: Any) -> TaskPlan:
        """The task with ``changes`` to ``phase``'s settings.

        Every phase whose settings are the same record (``base`` and ``teacher``) changes
        with it, as they do when a plan sets their key.
        """
        kind = type(self.phase_settings[phase.name])
        settings: dict[str, PhaseSettings] = {
            name: dataclasses.replace(value, **changes) if type(value) is kind else value
            for name, value in self.phase_settings.items()
        }
        return dataclasses.replace(self, phase_settings=settings)

    def document(self) -> dict[str, Any]:
        """The task's ``[[tasks]]`` table, as :func:`parse_plan` reads it."""
        table: dict[str, Any] = {
            **flat(self.section),
            "sites": "any" if self.sites is None else list(self.sites),
            **flat(self.optimiser),
            **flat(self.aggregation),
            **flat(self.privacy),
        }
        for settings in self.phase_settings.values():
            table |= flat(settings)
        return table


@dataclass(frozen=True)
class Plan:
    """The whole plan, validated."""

    model: ModelSection
    training: TrainingSection
    tasks: tuple[TaskPlan, ...]

    @property
    def encoder(self) -> EncoderConfig:
        """The shared encoder's configuration."""
        return EncoderConfig(self.model.encoder_widths)

    @property
    def patch(self) -> tuple[int, int, int]:
        """Training patch and sliding-window size."""
        return self.model.patch

    @property
    def preprocessing(self) -> Preprocessing:
        """Spacing and HU window of every image."""
        return Preprocessing(self.model.spacing_mm, self.model.hu_window)

    @property
    def max_payload_bytes(self) -> int:
        """The largest reply accepted."""
        return int(self.training.max_payload_mb * 2**20)

    def task(self, name: str) -> TaskPlan:
        """The task of that name."""
        return next(t for t in self.tasks if t.name == name)

    def with_task(self, task: TaskPlan) -> Plan:
        """The plan with ``task`` in place of the task of its name."""
        tasks = tuple(task if t.name == task.name else t for t in self.tasks)
        return dataclasses.replace(self, tasks=tasks)

    def document(self) -> dict[str, Any]:
        """The plan as a TOML-ready document, which :func:`parse_plan` reads back equal."""
        return {
            "model": flat(self.model),
            "training": flat(self.training),
            "tasks": [t.document() for t in self.tasks],
        }

    def train_settings(
        self, task: TaskPlan | None = None, steps: int | None = None, progress: bool = False
    ) -> LocalTrainSettings:
        """Local training as the plan sets it, for a loop run outside the federation.

        ``task``'s optimiser (default: the first task's), the plan's batch, patch, seed and
        precision; ``steps`` where given. (A site's round builds its own from its round
        config: ``RoundConfig.train_settings``.)
        """
        optimiser = (task or self.tasks[0]).optimiser
        training = self.training
        settings = local_settings(
            optimiser,
            training.batch_size,
            self.patch,
            training.seed,
            training.precision,
            progress=progress,
        )
        return settings if steps is None else dataclasses.replace(settings, steps=steps)


def task_keys() -> set[str]:
    """Every key a ``[[tasks]]`` table may hold."""
    groups = [
        TaskSection,
        Optimiser,
        AggregationSettings,
        Privacy,
        *(p.settings_type for p in PHASES.values()),
    ]
    return {"sites", *(k for g in groups for k in keys_of(g))}


def _task(table: Mapping[str, Any], where: str) -> TaskPlan:
    check_unknown(table, task_keys(), where)
    section = parse(TaskSection, table, where)
    try:
        check_task_name(section.name)
    except ValueError as e:
        raise PlanError(f"{where}.name: {e}") from None
    unknown = []
    for s in section.structures:
        try:
            anatomy.get(s)
        except anatomy.UnknownStructureError as e:
            unknown.append(str(e))
    if unknown:
        raise PlanError(f"{where}.structures: {'; '.join(unknown)}")
    check_structures(section.structures, f"{where}.structures")
    sites = table.get("sites", "any")
    if sites != "any" and not (
        isinstance(sites, list)
        and sites
        and all(isinstance(s, str) and 0 < len(s) <= 64 for s in sites)
        and len(set(sites)) == len(sites)
    ):
        raise PlanError(f'{where}.sites: expected "any" or distinct site names, found {sites!r}')
    if sites != "any" and section.min_sites > len(sites):
        raise PlanError(f"{where}.min_sites: {section.min_sites} > the {len(sites)} sites named")
    settings = {name: parse(p.settings_type, table, where) for name, p in PHASES.items()}
    privacy = parse(Privacy, table, where)
    check_privacy(privacy, settings[TEACHER.name], where)
    return TaskPlan(
        section,
        None if sites == "any" else tuple(sites),
        parse(Optimiser, table, where),
        parse(AggregationSettings, table, where),
        settings,
        privacy,
    )


def check_privacy(privacy: Privacy, training: PhaseSettings, where: str) -> None:
    """Refuse a DP task with a term that is not clipped per patient (FedProx's).

    Raises:
        PlanError: naming the key to change.
    """
    if privacy.on and isinstance(training, TrainingSettings) and training.proximal_mu:
        raise PlanError(f"{where}.proximal_mu: FedProx's term is not clipped per patient (DP)")


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}.{key}: expected a table")
    return value


def parse_plan(doc: Mapping[str, Any], where: str = "plan") -> Plan:
    """Validate a parsed plan document.

    Raises:
        PlanError: naming the field that is wrong.
    """
    try:
        check_unknown(doc, {"model", "training", "tasks"}, where)
        model_table, training_table = _table(doc, "model", where), _table(doc, "training", where)
        check_unknown(model_table, set(keys_of(ModelSection)), f"{where}: model")
        check_unknown(training_table, set(keys_of(TrainingSection)), f"{where}: training")
        model = parse(ModelSection, model_table, f"{where}: model")
        training = parse(TrainingSection, training_table, f"{where}: training")
        tables = doc.get("tasks", [])
        if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
            raise PlanError(f"{where}: tasks: expected [[tasks]] tables")
        tasks = tuple(_task(t, f"{where}: tasks[{i}]") for i, t in enumerate(tables))
    except (RecordError, anatomy.UnknownStructureError) as e:
        raise PlanError(str(e)) from None
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise PlanError(f"{where}: expected tasks with distinct names, found {names}")
    return Plan(model, training, tasks)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file.

    Raises:
        PlanError: naming the file and field.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PlanError(f"{path}: cannot read plan ({e})") from None
    return parse_plan(doc, str(path))
