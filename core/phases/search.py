"""The ``search`` phase: federated differentiable search of the student decoder's genotype.

Every round the server sends the averaged architecture parameters (alpha over operations,
beta over widths); each site trains its own supernet on private data (kept in its cache
between rounds) and returns only its updated alpha and beta, which the server averages.
The server then derives the student's genotype under the plan's size budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import RecordDict

from core.local.search import LocalSearchSettings as LocalSearch
from core.local.search import search_phase
from core.model import Genotype
from core.model.cost import genotype_parameters
from core.model.supernet import SuperNet
from core.payload import record_to_state, state_to_record
from core.phases.spec import (
    TRAIN,
    PhaseSettings,
    PhaseSpec,
    RoundPrivacy,
    ServerSteps,
    SiteResources,
    TaskState,
    reply,
    tail_mean,
    training_cases,
)
from core.protocol import ARCH, RoundConfig, SiteReply
from core.records import setting


@dataclass(frozen=True)
class SearchSettings(PhaseSettings):
    """Search rounds, steps and the student's size budget."""

    rounds: int = setting(
        1, lo=1, hi=1000, key="search_rounds", doc="rounds of the architecture search"
    )
    steps: int = setting(
        50,
        lo=1,
        hi=100_000,
        key="search_steps",
        fallback="local_steps",
        doc="local steps per search round",
    )
    size_budget: float = setting(
        0.25, lo=0.01, hi=1.0, doc="student parameters / teacher decoder parameters"
    )


@dataclass(frozen=True)
class SearchReply(SiteReply):
    """A site's search round: also the expected student size under its alpha and beta."""

    expected_parameters: float = setting(0.0, lo=0.0, hi=1e12)


def budget_parameters(widths: tuple[int, ...], structures: int, share: float) -> int:
    """The student's budget in parameters: a share of the teacher decoder's."""
    teacher = genotype_parameters(widths, Genotype.teacher(len(widths) - 1), structures)
    return max(1, int(share * teacher))


def arch_state(supernet: SuperNet) -> dict[str, torch.Tensor]:
    """The architecture parameters, which alone leave a site."""
    return {"alpha": supernet.alpha.detach(), "beta": supernet.beta.detach()}


class Search(PhaseSpec[SearchSettings, SearchReply]):
    """Federated DARTS-style search under a size budget."""

    name = "search"
    message_type = f"{TRAIN}.search"
    settings_type = SearchSettings
    reply_type = SearchReply

    def at_site(
        self, site: SiteResources, cfg: RoundConfig, settings: SearchSettings, content: RecordDict
    ) -> RecordDict:
        """Search locally; the supernet's weights stay in the site's cache."""
        dataset, train = training_cases(site, cfg)
        encoder = site.encoder(
            cfg.encoder_sha256, cfg.encoder, content.array_records.get("encoder")
        )
        torch.manual_seed(cfg.seed)
        supernet = SuperNet(cfg.encoder.widths, cfg.structures)
        site.load_local(f"supernet-{cfg.task}", supernet)
        values = record_to_state(
            content.array_records[ARCH], arch_state(supernet), f"{site.name}: arch"
        )
        with torch.no_grad():
            supernet.alpha.copy_(values["alpha"])
            supernet.beta.copy_(values["beta"])
        budget = budget_parameters(cfg.encoder.widths, len(cfg.structures), settings.size_budget)
        local = LocalSearch(cfg.train_settings(settings.steps), budget)
        privacy = RoundPrivacy(site, cfg)
        result = search_phase(
            encoder,
            supernet,
            dataset.labels,
            train,
            cfg.preprocessing,
            local,
            privacy.settings,
            privacy.account,
        )
        site.save_local(f"supernet-{cfg.task}", supernet)
        expected = result.expected_parameters[-1] if result.expected_parameters else 0.0
        loss = privacy.public(tail_mean(result.weight_losses, last=5))
        metrics = SearchReply(len(train), loss, result.seconds, privacy.epsilon, expected)
        return reply(cfg, metrics, {ARCH: state_to_record(arch_state(supernet), fp16=False)})

    def execute(self, steps: ServerSteps, state: TaskState) -> tuple[TaskState, dict[str, Any]]:
        """Average the sites' architecture parameters round by round, then derive."""
        settings = steps.settings(self)
        widths, structures = state.encoder.config.widths, state.decoder.structures
        supernet = SuperNet(widths, structures)
        for rnd in range(1, settings.rounds + 1):
            template = {k: v.clone() for k, v in arch_state(supernet).items()}  # this round's
            records = {ARCH: state_to_record(template, fp16=False)}
            result = steps.federated_round(
                self, state, rnd, settings.rounds, records, {ARCH: template}
            )
            with torch.no_grad():
                supernet.alpha.copy_(result.states[ARCH]["alpha"])
                supernet.beta.copy_(result.states[ARCH]["beta"])
        budget = budget_parameters(widths, len(structures), settings.size_budget)
        genotype = supernet.derive(budget)
        size = genotype_parameters(widths, genotype, len(structures))
        meta = {"genotype": genotype.to_json(), "parameters": size, "budget": budget}
        steps.save_checkpoint(self.name, arch_state(supernet), meta)
        summary = {
            **meta,
            "alpha": supernet.alpha.detach().tolist(),
            "beta": supernet.beta.detach().tolist(),
        }
        return dataclasses.replace(state, genotype=genotype), summary

    def restore(
        self, steps: ServerSteps, state: TaskState, summary: Mapping[str, Any]
    ) -> TaskState:
        """Reload the derived genotype."""
        _, meta = steps.load_checkpoint(self.name)
        return dataclasses.replace(state, genotype=Genotype.from_json(meta["genotype"]))
