import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from core.data.transforms import Augmentation
from core.local.private import (
    Privacy,
    PrivacyLedger,
    per_case_gradients,
    private_gradient,
    spent_epsilon,
)
from core.local.training import LocalTrainSettings, SegmentationLoss, train_phase
from tests.builders import nnunet_dataset
from tests.models import native_prep, tiny_model


def test_the_epsilon_is_the_accountant_s_own():
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.1, noise_multiplier=1.1, steps=300, orders=orders)
    expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert spent_epsilon([(1.1, 0.1, 300)], 1e-5) == pytest.approx(expected)
    assert spent_epsilon([(1.1, 0.1, 150)] * 2, 1e-5) == pytest.approx(expected)
    assert spent_epsilon([(1.1, 0.1, 0)], 1e-5) == 0.0
    # phases of other noise and rates compose: their Renyi divergences add up
    rdp += compute_rdp(q=0.25, noise_multiplier=2.0, steps=40, orders=orders)
    composed, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    history = [(1.1, 0.1, 300), (2.0, 0.25, 40)]
    assert spent_epsilon(history, 1e-5) == pytest.approx(composed)
    assert composed > expected


def test_a_patient_with_a_huge_gradient_moves_the_weights_no_more_than_the_clip():
    holder = Holder(torch.nn.Parameter(torch.zeros(3)))
    weight = holder.weight
    cases = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1e6, 0.0]])  # the second case: huge

    def loss_of(x, _):  # reads the weight through its module, as a network's forward does
        return (holder.weight * x).sum()

    per_case, seen = per_case_gradients(holder, [weight], loss_of, (cases, cases))
    assert torch.equal(per_case[0], cases) and seen.tolist() == [0.0, 0.0]
    clip = Privacy(noise_multiplier=0.0, max_grad_norm=0.5, delta=1e-5)
    (grad,) = private_gradient([weight], per_case, clip, expected_cases=2.0)
    # each case's gradient is its x, clipped to norm 0.5, summed, over the expected 2 cases
    assert torch.allclose(grad, torch.tensor([0.25, 0.25, 0.0]))
    assert float(grad.norm()) <= 2 * 0.5 / 2.0 + 1e-6  # no case adds more than the clip
    noisy = Privacy(noise_multiplier=4.0, max_grad_norm=0.5, delta=1e-5)
    (empty,) = private_gradient([weight], None, noisy, 2.0, torch.Generator().manual_seed(0))
    assert float(empty.norm()) > 0  # a step that sampled nobody is noise alone


class Holder(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight


def test_the_batched_per_case_gradients_are_each_case_s_own():
    model = tiny_model(("liver", "spleen")).double()  # float64: equal to rounding, not 1e-3
    decoder = model.decoder("abdomen")
    params = list(decoder.parameters()) + list(model.encoder.parameters())
    images = torch.randn(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)).double()
    labels = torch.randint(0, 3, (3, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1))

    def loss_with(loss_fn):
        return lambda x, y: loss_fn(decoder.organ_logits(model.encoder(x)), y)

    per_case, seen = per_case_gradients(  # two cases at a time: the third alone
        model, params, loss_with(SegmentationLoss(per_case=True)), (images, labels), chunk=2
    )
    plain = loss_with(SegmentationLoss())  # MONAI's one_hot: the loss the batches train on
    for i in range(3):
        loss = plain(images[i : i + 1], labels[i : i + 1])
        assert float(seen[i]) == pytest.approx(float(loss.detach()), rel=1e-5)
        own = torch.autograd.grad(loss, params, allow_unused=True)  # the heads: unused
        for p, g, batched in zip(params, own, per_case, strict=True):
            expected = torch.zeros_like(p) if g is None else g
            assert torch.allclose(batched[i], expected, atol=1e-12, rtol=1e-9)


def test_a_site_counts_every_round_itself_and_refuses_one_past_its_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    privacy = Privacy(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3, epsilon_budget=3.0)
    first = ledger.spend("abdomen", "teacher 1/2", privacy, 100, [(1.0, 0.02, 50)])
    again = ledger.spend("abdomen", "teacher 1/2", privacy, 100, [(1.0, 0.02, 50)])  # replayed
    assert 0 < first < again <= 3.0
    assert again == pytest.approx(spent_epsilon([(1.0, 0.02, 100)], 1e-3))
    assert ledger.spend("chest", "teacher 1/1", privacy, 100, [(1.0, 0.02, 50)]) == first
    with pytest.raises(ValueError, match="over the task's dp_epsilon 3"):
        ledger.spend("abdomen", "distill 1/1", privacy, 100, [(1.0, 0.02, 50_000)])
    assert ledger.history("abdomen") == [(1.0, 0.02, 50)] * 2  # a refused round counts nothing
    with pytest.raises(ValueError, match=r"dp_delta 0\.001: expected below 1 / 1000 cases"):
        ledger.spend("abdomen", "teacher 2/2", privacy, 1000, [(1.0, 0.002, 50)])
    strict = PrivacyLedger(tmp_path / "ledger.json", ceiling=again)  # the site's own limit
    with pytest.raises(ValueError, match="over the site's max-epsilon"):
        strict.spend("abdomen", "distill 1/1", privacy, 100, [(1.0, 0.02, 50)])
    with pytest.raises(ValueError, match="trains only under differential privacy"):
        strict.check_policy("abdomen", Privacy())
    strict.check_policy("abdomen", privacy)
    (tmp_path / "ledger.json").write_text("{not json")  # a ledger lost is not a fresh start
    with pytest.raises(ValueError, match=r"privacy ledger .*ledger\.json: unreadable"):
        ledger.spend("abdomen", "teacher 2/2", privacy, 100, [(1.0, 0.02, 50)])


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
