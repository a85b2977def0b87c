import math

import pytest
import torch

from core.domain import (
    BINS,
    SITE_CENTROIDS,
    TASK_CENTROIDS,
    SiteDomain,
    descriptors,
    domain_scores,
    join_domains,
    site_domain,
)


def _ct(z, level):
    """A body of one intensity (on [0, 1]) in air, ``z`` slices."""
    image = torch.zeros(10, 10, z)
    image[2:8, 2:8] = level
    return image


def test_a_slab_is_the_root_histogram_of_its_body_and_air_does_not_count():
    image = _ct(12, 0.5)
    image[..., 6:] = 0.0  # slices without body
    slabs = descriptors(image, spacing_z=8.0)  # 64 mm: 4 slices either side
    assert slabs.shape == (12, BINS)
    assert torch.allclose(slabs[0].square().sum(), torch.tensor(1.0, dtype=slabs.dtype))
    assert slabs[0].argmax() == BINS // 2 and slabs[0, 0] == 0
    assert bool((slabs[-1] == 0).all())  # 4 slices beyond the body: nothing in its slab
    bigger = _ct(12, 0.5)
    bigger[1:9, 1:9] = 0.5  # a larger patient: the same shares
    assert torch.allclose(descriptors(bigger, 8.0), descriptors(_ct(12, 0.5), 8.0))


def test_a_site_describes_its_background_and_each_structure_it_holds():
    cases = []
    for level in (0.5, 0.52, 0.48):
        image, label = _ct(20, level), torch.zeros(10, 10, 20, dtype=torch.long)
        image[..., 10:] = 0.9  # the upper half: bone-like
        label[3:6, 3:6, 12:18] = 1  # structure 1 lies in the upper half; 2 is never seen
        cases.append((image, label))
    domain = site_domain(cases, spacing_z=8.0, structures=2)
    assert domain is not None
    assert domain.centroids.shape == (3, SITE_CENTROIDS, BINS)
    assert domain.thresholds[0] > 0 and domain.thresholds[1] > 0 and domain.thresholds[2] == 0
    assert site_domain([(torch.zeros(10, 10, 20), torch.zeros(10, 10, 20))], 8.0, 1) is None


def test_sites_join_row_by_row_and_a_structure_is_never_tighter_than_the_background():
    def site(thresholds, kind):
        centroids = torch.zeros(3, SITE_CENTROIDS, BINS)
        centroids[:, :, kind] = 1.0
        return SiteDomain(centroids, torch.tensor(thresholds))

    centroids, thresholds = join_domains(
        [site([0.2, 0.05, 0.0], 3), site([0.4, 0.6, 0.0], 4), site([0.3, 9.0, 0.0], 5)]
    )
    assert centroids.shape == (3, TASK_CENTROIDS, BINS)
    # medians 0.3, 0.6 (9.0 is one site's); the empty row stays empty
    assert thresholds.tolist() == pytest.approx([0.3, 0.6, 0.0])
    _, floored = join_domains([site([0.3, 0.05, 0.0], 3)])
    assert floored.tolist() == pytest.approx([0.3, 0.3, 0.0])
    image = _ct(12, 3.5 / BINS)  # every slab in bin 3: the first site's kind
    scores = domain_scores(descriptors(image, spacing_z=8.0), centroids, thresholds)
    assert scores.shape == (3, 12)
    assert float(scores[0].max()) < 1e-6 and torch.equal(scores[2], scores[0])  # no row: its
    assert not math.isnan(float(scores.sum()))  # background's scores
