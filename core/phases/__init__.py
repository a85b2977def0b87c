"""The phases of a task's lifecycle, one module each, and their registry.

Each phase module holds its settings (plan keys, defaults, bounds), the reply a site
returns, the site-side procedure and the server-side step (see :mod:`core.phases.spec`).
Adding a phase is one new module and one line in :data:`PHASES`.
"""

from __future__ import annotations

from typing import Any

from core.phases.calibrate import Calibrate
from core.phases.distill import Distill
from core.phases.evaluate import Evaluate
from core.phases.search import Search
from core.phases.spec import PhaseSettings, PhaseSpec, ServerSteps, SiteResources, TaskState
from core.phases.training import Base, Teacher

BASE, TEACHER, SEARCH, DISTILL, CALIBRATE, EVALUATE = (
    Base(),
    Teacher(),
    Search(),
    Distill(),
    Calibrate(),
    Evaluate(),
)

PHASES: dict[str, PhaseSpec[Any, Any]] = {
    p.name: p for p in (BASE, TEACHER, SEARCH, DISTILL, CALIBRATE, EVALUATE)
}

__all__ = [
    "PHASES",
    "PhaseSettings",
    "PhaseSpec",
    "ServerSteps",
    "SiteResources",
    "TaskState",
]
