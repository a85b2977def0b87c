import math

import pytest
import torch

from core.domain import (
    BINS,
    CENTROID_WIDTH,
    CONTEXT_SLABS,
    DESCRIPTOR,
    OWN_SLAB,
    SITE_CENTROIDS,
    TASK_CENTROIDS,
    VIEWS,
    SiteDomain,
    descriptors,
    domain_scores,
    join_domains,
    nearest,
    nearest_inside,
    site_domain,
    slab_histograms,
)

WINDOW_MM = 128.0  # 16 slices of 8 mm: context slabs at -64, -32, 0, 32, 64 mm


def _ct(z, level):
    """A body of one intensity (on [0, 1]) in air, ``z`` slices."""
    image = torch.zeros(10, 10, z)
    image[2:8, 2:8] = level
    return image


def test_a_slab_is_the_root_histogram_of_its_body_and_air_does_not_count():
    image = _ct(12, 0.5)
    image[..., 6:] = 0.0  # slices without body
    slabs = slab_histograms(image, spacing_z=8.0)  # 64 mm: 4 slices either side
    assert slabs.shape == (12, BINS)
    assert torch.allclose(slabs[0].square().sum(), torch.tensor(1.0, dtype=slabs.dtype))
    assert slabs[0].argmax() == BINS // 2 and slabs[0, 0] == 0
    assert bool((slabs[-1] == 0).all())  # 4 slices beyond the body: nothing in its slab
    bigger = _ct(12, 0.5)
    bigger[1:9, 1:9] = 0.5  # a larger patient: the same shares
    assert torch.allclose(slab_histograms(bigger, 8.0), slab_histograms(_ct(12, 0.5), 8.0))


def test_a_descriptor_holds_the_slabs_across_the_window_and_nothing_past_the_ct():
    image = _ct(40, 0.5)
    image[..., 20:] = 0.9
    slabs = slab_histograms(image, 8.0)
    context = descriptors(image, 8.0, WINDOW_MM)
    assert context.shape == (40, DESCRIPTOR) and DESCRIPTOR == CONTEXT_SLABS * BINS
    assert float(context.square().sum(dim=1).max()) <= 1.0 + 1e-6
    parts = context.view(40, CONTEXT_SLABS, BINS) * CONTEXT_SLABS**0.5
    assert torch.allclose(context[:, OWN_SLAB] * CONTEXT_SLABS**0.5, slabs)
    assert torch.allclose(parts[10, 0], slabs[2]) and torch.allclose(parts[10, 4], slabs[18])
    assert bool((parts[3, :2] == 0).all())  # 64 and 32 mm below slice 3: outside the CT
    assert bool((parts[38, 3:] == 0).all())


def test_slabs_a_decoder_knows_one_by_one_are_out_of_its_domain_in_another_context():
    # its sites' CTs: a short stretch of one tissue, padded by air above and below (as a
    # narrow field of view is in training); the new CT: the same tissue in a long body
    # with bone above and below, so that every slab of its middle is one the decoder knows
    short = [(_ct(12, level), torch.zeros(10, 10, 12, dtype=torch.long)) for level in (0.5, 0.51)]
    long = _ct(60, 0.5)
    long[..., :24] = 0.9
    long[..., 36:] = 0.9
    slab_only = site_domain(short, 8.0, 0.0, structures=1)  # a window of one slab
    assert slab_only is not None
    alone = domain_scores(descriptors(long, 8.0, 0.0), *join_domains([slab_only]))
    assert float(alone[0, 28:32].max()) < 1.0  # slab by slab: at home
    domain = site_domain(short, 8.0, WINDOW_MM, structures=1)
    assert domain is not None
    centroids, thresholds = join_domains([domain])
    in_context = domain_scores(descriptors(long, 8.0, WINDOW_MM), centroids, thresholds)
    assert float(in_context[0, 28:32].min()) > 2.0  # in its window's context: not
    own = descriptors(_ct(12, 0.505), 8.0, WINDOW_MM)
    assert float(domain_scores(own, centroids, thresholds)[0].max()) < 2.0


def test_a_short_ct_is_scored_on_the_slabs_it_has_not_on_the_air_past_its_ends():
    # its sites' CTs: long bodies of one tissue, so no window ever ran past their ends in
    # the middle; the new CT: the same tissue, short, so most windows do (the scan stopped)
    long = [(_ct(60, level), torch.zeros(10, 10, 60, dtype=torch.long)) for level in (0.5, 0.51)]
    domain = site_domain(long, 8.0, WINDOW_MM, structures=1)
    assert domain is not None
    centroids, thresholds = join_domains([domain])
    short = descriptors(_ct(10, 0.505), 8.0, WINDOW_MM)
    assert bool((short.view(10, CONTEXT_SLABS, BINS)[:8, 0] == 0).all())  # air past its end
    assert float(domain_scores(short, centroids, thresholds)[0].max()) < 2.0  # at home
    # what the short CT does hold is still judged: other tissue in its window is not
    other = _ct(10, 0.505)
    other[..., :3] = 0.9
    scores = domain_scores(descriptors(other, 8.0, WINDOW_MM), centroids, thresholds)
    assert float(scores[0, 4:7].min()) > 2.0
    assert nearest_inside(short, short).max() == 0  # and where nothing is missing, nearest
    full = descriptors(_ct(60, 0.5), 8.0, WINDOW_MM)[20:40]
    assert torch.allclose(
        nearest_inside(full, centroids[0, :, :DESCRIPTOR]),
        nearest(full, centroids[0, :, :DESCRIPTOR]),
    )


def test_a_site_describes_its_background_and_each_structure_it_holds():
    cases = []
    for level in (0.5, 0.52, 0.48):
        image, label = _ct(20, level), torch.zeros(10, 10, 20, dtype=torch.long)
        image[..., 10:] = 0.9  # the upper half: bone-like
        label[3:6, 3:6, 12:18] = 1  # structure 1 lies in the upper half; 2 is never seen
        cases.append((image, label))
    domain = site_domain(cases, spacing_z=8.0, window_mm=WINDOW_MM, structures=2)
    assert domain is not None
    assert domain.centroids.shape == (3, SITE_CENTROIDS, CENTROID_WIDTH)
    assert domain.thresholds.shape == (3, len(VIEWS))
    assert bool((domain.thresholds[:2] > 0).all()) and bool((domain.thresholds[2] == 0).all())
    empty = [(torch.zeros(10, 10, 20), torch.zeros(10, 10, 20))]
    assert site_domain(empty, 8.0, WINDOW_MM, 1) is None


def test_sites_join_row_by_row_and_a_structure_is_never_tighter_than_the_background():
    def site(thresholds, kind):
        centroids = torch.zeros(3, SITE_CENTROIDS, CENTROID_WIDTH)
        centroids[:, :, kind] = 1.0
        return SiteDomain(centroids, torch.tensor(thresholds)[:, None].expand(3, len(VIEWS)))

    centroids, thresholds = join_domains(
        [site([0.2, 0.05, 0.0], 3), site([0.4, 0.6, 0.0], 4), site([0.3, 9.0, 0.0], 5)]
    )
    assert centroids.shape == (3, TASK_CENTROIDS, CENTROID_WIDTH)
    # medians 0.3, 0.6 (9.0 is one site's); the empty row stays empty
    assert thresholds[:, 0].tolist() == pytest.approx([0.3, 0.6, 0.0])
    _, floored = join_domains([site([0.3, 0.05, 0.0], 3)])
    assert floored[:, 1].tolist() == pytest.approx([0.3, 0.3, 0.0])
    image = _ct(12, 3.5 / BINS)  # every slab in bin 3: the first site's kind
    slabs = torch.zeros(12, DESCRIPTOR)
    slabs[:, :BINS] = slab_histograms(image, spacing_z=8.0)
    scores = domain_scores(slabs, centroids, thresholds)
    assert scores.shape == (3, 12)
    assert float(scores[0].max()) < 1e-6 and torch.equal(scores[2], scores[0])  # no row: its
    assert not math.isnan(float(scores.sum()))  # background's scores
