import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from core.data.transforms import Augmentation
from core.local.private import Privacy, check_round, private_gradient, spent_epsilon
from core.local.training import LocalTrainSettings, train_phase
from tests.builders import nnunet_dataset
from tests.models import native_prep, tiny_model


def test_the_epsilon_is_the_accountant_s_own():
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.1, noise_multiplier=1.1, steps=300, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert spent_epsilon(1.1, 0.1, 300, 1e-5) == pytest.approx(expected)
    assert spent_epsilon(1.1, 0.1, 600, 1e-5) > spent_epsilon(1.1, 0.1, 300, 1e-5)
    assert spent_epsilon(1.1, 0.1, 0, 1e-5) == 0.0


def test_a_patient_with_a_huge_gradient_moves_the_weights_no_more_than_the_clip():
    weight = torch.nn.Parameter(torch.zeros(3))
    cases = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1e6, 0.0])]  # the second: huge
    losses = [lambda x=x: (weight * x).sum() for x in cases]
    clip = Privacy(noise_multiplier=0.0, max_grad_norm=0.5, delta=1e-5)
    (grad,), seen = private_gradient([weight], losses, clip, expected_cases=2.0)
    assert seen == [0.0, 0.0]
    # each case's gradient is its x, clipped to norm 0.5, summed, over the expected 2 cases
    assert torch.allclose(grad, torch.tensor([0.25, 0.25, 0.0]))
    assert float(grad.norm()) <= 2 * 0.5 / 2.0 + 1e-6  # no case adds more than the clip
    noisy = Privacy(noise_multiplier=4.0, max_grad_norm=0.5, delta=1e-5)
    (empty,), _ = private_gradient([weight], [], noisy, 2.0, torch.Generator().manual_seed(0))
    assert float(empty.norm()) > 0  # a step that sampled nobody is noise alone


def test_a_site_refuses_a_round_past_its_budget_or_with_a_delta_too_large():
    privacy = Privacy(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3, epsilon_budget=3.0)
    first = check_round(privacy, cases=100, rate=0.02, steps_after=50)
    assert 0 < first <= 3.0
    with pytest.raises(ValueError, match="over the task's dp_epsilon 3"):
        check_round(privacy, cases=100, rate=0.02, steps_after=50_000)
    with pytest.raises(ValueError, match=r"dp_delta 0\.001: expected below 1 / 1000 cases"):
        check_round(privacy, cases=1000, rate=0.002, steps_after=50)


@pytest.mark.slow  # trains the tiny network three steps under DP-SGD
def test_a_private_phase_trains_one_patch_per_sampled_patient(tmp_path):
    data = nnunet_dataset(tmp_path / "A", n_cases=3, structures=("liver", "spleen"))
    model = tiny_model(data.labels.structures)
    before = {k: v.clone() for k, v in model.decoder("abdomen").state_dict().items()}
    settings = LocalTrainSettings(
        steps=2, batch_size=2, augmentation=Augmentation(patch_size=(16,) * 3), progress=False
    )
    privacy = Privacy(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    result = train_phase(
        model, "abdomen", data.labels, data.cases, [], native_prep(data), settings,
        train_encoder=True, privacy=privacy,
    )  # fmt: skip
    assert len(result.losses) == 2
    after = model.decoder("abdomen").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="proximal_mu"):
        train_phase(
            model, "abdomen", data.labels, data.cases, [], native_prep(data), settings,
            train_encoder=True, proximal_mu=0.1, privacy=privacy,
        )  # fmt: skip
