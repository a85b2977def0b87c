"""A finished run's bundle again, with other merge settings or its domains measured anew.

The merge is settled after training: its settings sit in the bundle's manifest, and each
decoder's domain depends only on its sites' CTs and labels (``core.local.calibration``). So a
run trained before a change of either can be scored as if it had been made after it,
without training again: :func:`rebundle` writes a copy of the run's bundle with the
merge's ``domain_weight`` and ``anomaly_weight`` replaced and, where asked, every
decoder's domain recomputed from its simulated sites' training splits, as the calibrate
phase computes it. ``csfl merge-report --domain-weight/--anomaly-weight/--redo-domains``
scores that copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.bundle import Bundle, load_bundle, save_bundle
from core.data import open_dataset, split_cases
from core.domain import SiteDomain, join_domains
from core.local.calibration import cases_domain
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
) -> Path:
    """Write ``RUN/rebundled``: the run's bundle with the settings given replaced.

    Args:
        run: a finished ``csfl simulate`` folder (``catalog/bundle``, ``sites/``).
        scenario: the scenario it simulated.
        domain_weight: the merge's ``domain_weight`` (``None``: the bundle's).
        anomaly_weight: the merge's ``anomaly_weight`` (``None``: the bundle's).
        redo_domains: recompute each decoder's domain from its sites' training CTs.

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
    out = run / REBUNDLED
    save_bundle(dataclasses.replace(bundle, merge=merge), out)
    return out


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
