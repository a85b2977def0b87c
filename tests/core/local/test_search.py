import random

import numpy as np
import pytest
import torch

from core.data import CaseArrays, write_nnunet
from core.data.transforms import Augmentation, Preprocessing
from core.local.search import LocalSearchSettings, search_phase
from core.local.training import LocalTrainSettings
from core.model import Encoder, Genotype, Stage
from core.model.cost import genotype_parameters
from core.model.genotype import WIDTH_CHOICES
from core.model.supernet import SuperNet
from tests.models import TINY

STRUCTURES = ("liver", "spleen")


def _one_hot(net, genotype):
    with torch.no_grad():
        net.alpha.fill_(-30.0)
        net.beta.fill_(-30.0)
        for i, stage in enumerate(genotype.stages):
            net.alpha[i, ["3d", "p3d", "2d"].index(stage.op)] = 30.0
            net.beta[i, WIDTH_CHOICES.index(stage.width)] = 30.0


def test_expected_size_is_exact_for_a_decided_architecture():
    net = SuperNet(TINY.widths, STRUCTURES)
    rng = random.Random(0)
    for _ in range(5):
        genotype = Genotype(
            tuple(
                Stage(rng.choice(["3d", "p3d", "2d"]), rng.choice(WIDTH_CHOICES)) for _ in range(3)
            )
        )
        _one_hot(net, genotype)
        exact = genotype_parameters(TINY.widths, genotype, len(STRUCTURES))
        assert abs(float(net.expected_parameters().detach()) - exact) < 1e-3 * exact


def test_derived_genotypes_respect_the_budget_and_shrink_with_it():
    net = SuperNet(TINY.widths, STRUCTURES)
    with torch.no_grad():
        net.alpha.normal_()
        net.beta.normal_()
    teacher = genotype_parameters(TINY.widths, Genotype.teacher(3), len(STRUCTURES))
    sizes = []
    for fraction in (1.0, 0.5, 0.25, 0.1):
        genotype = net.derive(int(fraction * teacher))
        size = genotype_parameters(TINY.widths, genotype, len(STRUCTURES))
        assert size <= fraction * teacher, (fraction, genotype)
        sizes.append(size)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def _in_plane_dataset(root):
    """Structures that do not change along z: in-plane features are all there is."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        label2d = np.zeros((16, 16), np.uint8)
        label2d[2:7, 3:9] = 1
        label2d[9:14, 8:13] = 2
        label = np.repeat(label2d[:, :, None], 16, axis=2)
        image = (label.astype(np.int16) * 300 - 900 + rng.normal(0, 20, label.shape)).astype(
            np.int16
        )
        cases.append(CaseArrays(f"c{i}", image, label, np.diag([2.0, 2.0, 2.0, 1.0])))
    return write_nnunet(root, STRUCTURES, cases)


@pytest.mark.slow
def test_search_moves_the_architecture_and_the_cost_term_shrinks_it(tmp_path):
    dataset = _in_plane_dataset(tmp_path / "D")
    torch.manual_seed(0)
    encoder = Encoder(TINY).freeze()
    teacher = genotype_parameters(TINY.widths, Genotype.teacher(3), len(STRUCTURES))
    prep = Preprocessing((2.0, 2.0, 2.0))
    train = LocalTrainSettings(
        steps=12, augmentation=Augmentation(patch_size=(16, 16, 16)), progress=False
    )
    net = SuperNet(TINY.widths, STRUCTURES)
    start = float(net.expected_parameters().detach())
    result = search_phase(
        encoder,
        net,
        dataset.labels,
        dataset.cases,
        prep,
        LocalSearchSettings(train, int(0.1 * teacher), cost_weight=5.0),
    )
    assert net.alpha.detach().abs().max() > 1e-3 and net.beta.detach().abs().max() > 1e-3
    assert result.expected_parameters[-1] < start  # the cost term pulls the size down
    assert len(result.weight_losses) == 12 and len(result.arch_losses) >= 8
