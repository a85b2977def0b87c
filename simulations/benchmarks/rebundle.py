"""A finished run's bundle again, with other merge settings or its records measured anew.

The merge is settled after training: its settings sit in the bundle's manifest, each
decoder's domain depends only on its sites' CTs and labels (``core.local.calibration``),
and its validation scores only on the decoder and its sites' validation CTs. So a run
trained before a change of any of these can be scored as if it had been made after it,
without training again: :func:`rebundle` writes a copy of the run's bundle with the
merge's ``domain_weight`` and ``anomaly_weight`` replaced and, where asked, every
decoder's domain recomputed from its simulated sites' training splits, as the calibrate
phase computes it, or its validation Dice, precision and recall (the merge's skills)
from their validation splits, as the evaluate phase computes them. ``csfl merge-report
--domain-weight/--anomaly-weight/--redo-domains/--redo-skills`` scores that copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.bundle import Bundle, load_bundle, save_bundle
from core.data import open_dataset, split_cases
from core.domain import SiteDomain, join_domains
from core.local.calibration import cases_domain
from core.local.evaluation import evaluate_task
from core.merge import Calibration
from core.scores import METRICS, ScoreSums
from server.plan import Plan
from simulations.scenario import Scenario

REBUNDLED = "rebundled"
"""Where in a run's folder :func:`rebundle` writes its copy."""


def rebundle(
    run: Path,
    scenario: Scenario,
    domain_weight: float | None = None,
    anomaly_weight: float | None = None,
    redo_domains: bool = False,
    redo_skills: bool = False,
) -> Path:
    """Write ``RUN/rebundled``: the run's bundle with the settings given replaced.

    Args:
        run: a finished ``csfl simulate`` folder (``catalog/bundle``, ``sites/``).
        scenario: the scenario it simulated.
        domain_weight: the merge's ``domain_weight`` (``None``: the bundle's).
        anomaly_weight: the merge's ``anomaly_weight`` (``None``: the bundle's).
        redo_domains: recompute each decoder's domain from its sites' training CTs.
        redo_skills: recompute each decoder's validation Dice, precision and recall from
            its sites' validation CTs.

    Returns:
        The folder of the copy.

    Raises:
        ValueError: for a weight out of its range or a site whose data is missing or
            unreadable (``core.data.DataError`` naming the folder).
    """
    bundle = load_bundle(run / "catalog" / "bundle")
    merge = bundle.merge
    if domain_weight is not None:
        merge = dataclasses.replace(merge, domain_weight=domain_weight)
    if anomaly_weight is not None:
        merge = dataclasses.replace(merge, anomaly_weight=anomaly_weight)
    if redo_domains:
        plan = scenario.plan
        for task, decoder in bundle.model.items():
            domains = [
                domain
                for site in scenario.sites_of(task)
                if (domain := _site_domain(run, scenario, site.name, task, bundle, plan))
            ]
            if domains:
                centroids, thresholds = join_domains(domains)
                decoder.domain_centroids.copy_(centroids)
                decoder.domain_thresholds.copy_(thresholds)
    calibration = dict(bundle.calibration)
    if redo_skills:
        for task in bundle.model.tasks:
            scores = ScoreSums()
            for site in scenario.sites_of(task):
                scores.merge(_site_scores(run, scenario, site.name, task, bundle))
            means = {metric: scores.means(metric) for metric in METRICS}
            calibration[task] = calibration.get(task, Calibration()).scored(means)
    out = run / REBUNDLED
    save_bundle(dataclasses.replace(bundle, merge=merge, calibration=calibration), out)
    return out


def _site_scores(run: Path, scenario: Scenario, site: str, task: str, bundle: Bundle) -> ScoreSums:
    """What a site's evaluate phase measures of ``task``'s decoder on its validation split."""
    dataset = open_dataset(run / "sites" / site / scenario.dataset_folder(task))
    plan = scenario.plan
    _, val = split_cases(dataset.cases, plan.training.val_fraction, plan.training.seed)
    structures = bundle.model.decoder(task).structures
    labelled = [s for s in structures if s in dataset.labels.structures]
    return evaluate_task(
        bundle.model,
        task,
        list(val),
        dataset.labels,
        bundle.preprocessing,
        bundle.roi_size,
        scored=labelled,
        hd95=False,  # the merge reads Dice, precision and recall only
    )


def _site_domain(
    run: Path, scenario: Scenario, site: str, task: str, bundle: Bundle, plan: Plan
) -> SiteDomain | None:
    """What a site's calibrate phase measures of ``task``'s decoder: its training split's domain."""
    dataset = open_dataset(run / "sites" / site / scenario.dataset_folder(task))
    train, _ = split_cases(dataset.cases, plan.training.val_fraction, plan.training.seed)
    structures = bundle.model.decoder(task).structures
    return cases_domain(
        list(train), dataset.labels, bundle.preprocessing, structures, bundle.roi_size[2]
    )
