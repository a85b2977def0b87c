"""Decoder trimming phases: federated architecture search, then distillation into the student.

``search``: every round the server sends the averaged architecture parameters (alpha over
operations, beta over widths); each site trains its own supernet on private data (kept in
its cache) and returns only its updated alpha and beta, which the server averages. The
server then derives the student's genotype under the plan's size budget.

``distill``: the server sends the teacher and the student; sites train the student from
labels and the teacher's soft predictions; the server averages the students. The teacher
is then dropped: only the student is evaluated and registered.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from core.model import Decoder, Genotype
from core.model.cost import genotype_parameters
from core.model.distill import inherit
from core.model.search import SuperNet
from core.payload import state_to_record
from core.protocol import ARCH, DECODER, TEACHER
from core.training import Phase
from server.phases import PhaseStep, TaskJob

log = logging.getLogger(__name__)


class ArchitectureSearch(PhaseStep):
    """Federated differentiable search of the student's genotype."""

    name = str(Phase.SEARCH)

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Average the sites' architecture parameters round by round, then derive."""
        task = job.task
        supernet = SuperNet(job.encoder.config.widths, task.structures)
        template = {
            "alpha": supernet.alpha.detach().clone(),
            "beta": supernet.beta.detach().clone(),
        }
        for rnd in range(1, task.search_rounds + 1):
            arch = {"alpha": supernet.alpha.detach(), "beta": supernet.beta.detach()}
            records = {ARCH: state_to_record(arch, fp16=False)}
            avg = job.federated_round(
                self.name, rnd, task.search_rounds, task.search_steps, records, {ARCH: template}
            )
            with torch.no_grad():
                supernet.alpha.copy_(avg.states[ARCH]["alpha"])
                supernet.beta.copy_(avg.states[ARCH]["beta"])
        budget = job.budget()
        job.genotype = supernet.derive(budget)
        size = genotype_parameters(job.encoder.config.widths, job.genotype, len(task.structures))
        arch = {"alpha": supernet.alpha.detach(), "beta": supernet.beta.detach()}
        meta = {"genotype": job.genotype.to_json(), "parameters": size, "budget": budget}
        job.catalog.save_checkpoint(task.name, self.name, arch, meta)
        log.info(
            "%s: searched %s, %d parameters (budget %d)", task.name, job.genotype, size, budget
        )
        return {
            "genotype": job.genotype.to_json(),
            "parameters": size,
            "budget": budget,
            "alpha": arch["alpha"].tolist(),
            "beta": arch["beta"].tolist(),
        }

    def restore(self, job: TaskJob) -> None:
        """Reload the derived genotype."""
        _, meta = job.catalog.load_checkpoint(job.task.name, self.name)
        job.genotype = Genotype.from_json(meta["genotype"])


class Distillation(PhaseStep):
    """Federated distillation of the teacher into the searched student."""

    name = str(Phase.DISTILL)

    def _student(self, job: TaskJob) -> Decoder:
        assert job.genotype is not None, "distillation needs the searched genotype"
        return Decoder(job.encoder.config.widths, job.genotype, job.task.structures)

    def execute(self, job: TaskJob) -> dict[str, Any]:
        """Train the student over rounds; it then replaces the teacher in the job.

        The student starts from the teacher's weights (the first channels of each layer),
        which distillation on a CPU budget needs: a student from scratch lags far behind.
        """
        task, student = job.task, inherit(self._student(job), job.decoder)
        teacher = {TEACHER: state_to_record(job.decoder.state_dict())}
        losses = []
        for rnd in range(1, task.distill_rounds + 1):
            records = {**teacher, DECODER: state_to_record(student.state_dict())}
            templates = {DECODER: student.state_dict()}
            avg = job.federated_round(
                self.name,
                rnd,
                task.distill_rounds,
                task.distill_steps,
                records,
                templates,
                student.genotype,
            )
            student.load_state_dict(avg.states[DECODER])
            losses.append(avg.loss)
        meta = {"genotype": student.genotype.to_json(), "losses": losses}
        job.catalog.save_checkpoint(task.name, self.name, student.state_dict(), meta)
        job.decoder = student
        return {"losses": losses, "genotype": student.genotype.to_json()}

    def restore(self, job: TaskJob) -> None:
        """Reload the distilled student in place of the teacher."""
        state, meta = job.catalog.load_checkpoint(job.task.name, self.name)
        job.genotype = Genotype.from_json(meta["genotype"])
        student = self._student(job)
        student.load_state_dict(state)
        job.decoder = student
