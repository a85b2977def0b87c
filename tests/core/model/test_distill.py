import pytest
import torch

from core.model.distill import kd_loss


def test_kd_loss_is_zero_for_the_teacher_itself_and_grows_with_disagreement():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 4, 4, 4)
    assert float(kd_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    near = kd_loss(teacher + 0.1 * torch.randn_like(teacher), teacher, 2.0)
    far = kd_loss(torch.randn_like(teacher), teacher, 2.0)
    assert 0 < float(near) < float(far)


@pytest.mark.slow
def test_distillation_lowers_kd_loss_and_the_student_approaches_the_teacher(
    tiny_sites, trained_bundle
):
    from core.bundle import load_bundle
    from core.data import open_dataset
    from core.data.transforms import Augmentation
    from core.evaluation import evaluate_task
    from core.model import Decoder, Genotype
    from core.model.cost import count_parameters
    from core.model.distill import distill_phase
    from core.training import TrainSettings
    from tests.conftest import PATCH, abdomen_cases

    bundle = load_bundle(trained_bundle)
    model, prep = bundle.model, bundle.preprocessing
    teacher = model.decoder("abdomen")
    dataset = tiny_sites["hospA"].dataset
    held_out = open_dataset(dataset.root.parent.parent / "test" / dataset.root.name)
    torch.manual_seed(1)
    student = Decoder(
        model.encoder.config.widths, Genotype.uniform("p3d", 0.5, 3), teacher.structures
    )
    assert count_parameters(student) < 0.4 * count_parameters(teacher)
    settings = TrainSettings(steps=120, augmentation=Augmentation(patch_size=PATCH), progress=False)
    result = distill_phase(
        model, "abdomen", student, dataset.labels, abdomen_cases(tiny_sites), prep, settings
    )
    assert sum(result.kd_losses[-15:]) < 0.5 * sum(result.kd_losses[:15])
    scores = {}
    for name, decoder in (("teacher", teacher), ("student", student)):
        probe = type(model)(model.encoder)
        probe.add_decoder("abdomen", decoder)
        dice = evaluate_task(probe, "abdomen", held_out.cases, held_out.labels, prep, PATCH).means(
            "dice"
        )
        scores[name] = sum(v or 0.0 for v in dice.values()) / len(dice)
    assert scores["student"] >= 0.8 * scores["teacher"], scores
