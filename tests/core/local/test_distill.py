import pytest
import torch

from core.local.distill import kd_loss
from core.model import Decoder, Encoder, Genotype
from core.model.inherit import inherit
from tests.models import TINY


def test_kd_loss_is_zero_for_the_teacher_itself_and_grows_with_disagreement():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 4, 4, 4)
    assert float(kd_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    near = kd_loss(teacher + 0.1 * torch.randn_like(teacher), teacher, 2.0)
    far = kd_loss(torch.randn_like(teacher), teacher, 2.0)
    assert 0 < float(near) < float(far)


def test_a_student_inherits_its_teacher():
    torch.manual_seed(0)
    encoder = Encoder(TINY).eval()
    teacher = Decoder(TINY.widths, Genotype.teacher(3), ("liver", "spleen")).eval()
    copy = inherit(Decoder(TINY.widths, Genotype.teacher(3), ("liver", "spleen")), teacher).eval()
    features = encoder(torch.randn(1, 1, 16, 16, 16))
    with torch.no_grad():
        assert torch.equal(copy(features).organ, teacher(features).organ)
        narrow = inherit(
            Decoder(TINY.widths, Genotype.uniform("2d", 0.25, 3), ("liver", "spleen")), teacher
        )
        assert torch.equal(narrow.organ_head.bias, teacher.organ_head.bias)
        assert narrow(features).organ.shape == teacher(features).organ.shape
    with pytest.raises(ValueError, match="full-width 3d"):
        inherit(copy, narrow)


@pytest.mark.slow
def test_distillation_lowers_kd_loss_and_the_student_approaches_the_teacher(
    tiny_sites, trained_bundle
):
    from core.bundle import load_bundle
    from core.data.transforms import Augmentation
    from core.local.distill import distill_phase
    from core.local.evaluation import evaluate_task
    from core.local.training import LocalTrainSettings
    from core.model.cost import count_parameters
    from tests.models import PATCH, abdomen_cases, held_out_set

    bundle = load_bundle(trained_bundle)
    model, prep = bundle.model, bundle.preprocessing
    teacher = model.decoder("abdomen")
    dataset = tiny_sites["hospA"].dataset
    held_out = held_out_set(dataset)
    # The shape a search under a 25% budget takes: narrow deep stages, a full-width last one.
    stages = [("p3d", 0.25), ("p3d", 0.5), ("3d", 1.0)]
    genotype = Genotype.from_json({"stages": [{"op": o, "width": w} for o, w in stages]})
    widths, cases = model.encoder.config.widths, abdomen_cases(tiny_sites)
    torch.manual_seed(1)
    scratch = Decoder(widths, genotype, teacher.structures)
    short = LocalTrainSettings(
        steps=30, augmentation=Augmentation(patch_size=PATCH), progress=False
    )
    result = distill_phase(model, "abdomen", scratch, dataset.labels, cases, prep, short)
    assert sum(result.kd_losses[-10:]) < 0.7 * sum(result.kd_losses[:10])  # KD is learnt

    student = inherit(Decoder(widths, genotype, teacher.structures), teacher)
    assert count_parameters(student) < 0.25 * count_parameters(teacher)
    settings = LocalTrainSettings(
        steps=50, augmentation=Augmentation(patch_size=PATCH), progress=False
    )
    distill_phase(model, "abdomen", student, dataset.labels, cases, prep, settings)
    scores = {}
    for name, decoder in (("teacher", teacher), ("student", student)):
        probe = type(model)(model.encoder)
        probe.add_decoder("abdomen", decoder)
        dice = evaluate_task(probe, "abdomen", held_out.cases, held_out.labels, prep, PATCH).means(
            "dice"
        )
        scores[name] = sum(v or 0.0 for v in dice.values()) / len(dice)
    assert scores["student"] >= 0.8 * scores["teacher"], scores
