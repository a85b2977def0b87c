import pytest
import torch

from core.model import ContinualSegmenter, Decoder, Encoder, EncoderConfig, Genotype, Stage
from core.model.blocks import conv, standard_format
from core.model.cost import count_parameters, genotype_cost
from tests.models import TINY

STRUCTURES = ("liver", "spleen", "kidney_left")


def test_encoder_returns_skips_at_halving_resolutions():
    features = Encoder(TINY)(torch.zeros(1, 1, 32, 32, 32))
    assert [f.shape[1] for f in features] == list(TINY.widths)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4]


def test_encoder_configs():
    assert EncoderConfig.cpu_default().widths == (8, 16, 32, 64, 128)
    gpu = EncoderConfig.gpu_default()
    assert gpu.widths[-1] == 320 and gpu.divisor == 32
    assert EncoderConfig.from_json(gpu.to_json()) == gpu
    with pytest.raises(ValueError, match="encoder config"):
        EncoderConfig((8,))


def test_frozen_encoder_has_no_grads_and_stays_in_eval_mode():
    encoder = Encoder(TINY).freeze()
    model = ContinualSegmenter(encoder)
    model.train()
    assert encoder.frozen and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_encoder_hash_is_stable_and_tracks_weights():
    torch.manual_seed(1)
    a = Encoder(TINY)
    torch.manual_seed(1)
    b = Encoder(TINY)
    assert a.weights_sha256() == b.weights_sha256()
    with torch.no_grad():
        next(b.parameters())[0].add_(1e-3)
    assert a.weights_sha256() != b.weights_sha256()


def test_genotype_json_round_trip_and_validation():
    g = Genotype((Stage("3d", 1.0), Stage("p3d", 0.5), Stage("2d", 0.25)))
    assert Genotype.from_json(g.to_json()) == g
    assert str(g) == "3d@1 p3d@0.5 2d@0.25"
    assert Genotype.teacher(3) == Genotype.uniform("3d", 1.0, 3)
    with pytest.raises(ValueError, match="op 'conv'"):
        Genotype.from_json({"stages": [{"op": "conv", "width": 1}]})
    with pytest.raises(ValueError, match="width 0"):
        Stage("3d", 0)
    with pytest.raises(ValueError, match="needs 3"):
        Genotype.teacher(4).widths(TINY.widths)


def test_decoder_heads_and_shapes():
    encoder = Encoder(TINY)
    decoder = Decoder(TINY.widths, Genotype.teacher(3), STRUCTURES)
    out = decoder(encoder(torch.zeros(2, 1, 32, 32, 32)))
    assert out.organ.shape == (2, 1 + len(STRUCTURES), 32, 32, 32)
    assert out.anomaly.shape == out.confidence.shape == (2, 1, 32, 32, 32)


def test_the_organ_head_alone_gives_the_full_forward_s_organ_logits_and_gradients():
    torch.manual_seed(0)
    model = ContinualSegmenter(Encoder(TINY))
    model.add_decoder("t", Decoder(TINY.widths, Genotype.teacher(3), ("liver", "spleen")))
    x = torch.randn(1, 1, 16, 16, 16)
    grads = []
    for organ in (lambda: model.forward_task(x, "t").organ, lambda: model.organ_logits(x, "t")):
        model.zero_grad()
        logits = organ()
        logits.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(logits, model.forward_task(x, "t").organ)
    assert grads[0].keys() == grads[1].keys()  # the calibration head gets no gradient either way
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_the_heads_compute_what_their_modules_define():
    # the organ head runs as a matrix product and the calibration head's first convolution
    # as two: both must stay the modules' own functions, weights as stored
    torch.manual_seed(0)
    decoder = Decoder(TINY.widths, Genotype.teacher(3), STRUCTURES)
    features = Encoder(TINY)(torch.randn(2, 1, 16, 16, 16))
    out = decoder(features)
    x = decoder.last_features(features)
    organ = decoder.organ_head(x)
    heads = decoder.calibration_head(torch.cat([x, organ.softmax(dim=1)], dim=1))
    torch.testing.assert_close(out.organ, organ)
    torch.testing.assert_close(out.anomaly, heads[:, :1])
    torch.testing.assert_close(out.confidence, heads[:, 1:])


def test_decoder_refuses_unknown_or_repeated_structures():
    with pytest.raises(KeyError, match="closest: liver"):
        Decoder(TINY.widths, Genotype.teacher(3), ("livr",))
    with pytest.raises(ValueError, match="repeat"):
        Decoder(TINY.widths, Genotype.teacher(3), ("liver", "liver"))


def test_in_plane_op_has_no_extent_along_the_body_axis():
    decoder = Decoder(TINY.widths, Genotype.uniform("2d", 1.0, 3), STRUCTURES)
    kernels = {m.kernel_size for m in decoder.stages.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(3, 3, 1)}
    p3d = Decoder(TINY.widths, Genotype.uniform("p3d", 1.0, 3), STRUCTURES)
    kernels = {m.kernel_size for m in p3d.stages.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(3, 3, 1), (1, 1, 3)}


def test_cost_orders_genotypes_by_size_and_compute():
    teacher = genotype_cost(TINY, Genotype.teacher(3), STRUCTURES, (32, 32, 32))
    p3d = genotype_cost(TINY, Genotype.uniform("p3d", 0.5, 3), STRUCTURES, (32, 32, 32))
    tiny = genotype_cost(TINY, Genotype.uniform("2d", 0.25, 3), STRUCTURES, (32, 32, 32))
    assert teacher.parameters > p3d.parameters > tiny.parameters
    assert teacher.macs > p3d.macs > tiny.macs > 0
    built = Decoder(TINY.widths, Genotype.teacher(3), STRUCTURES)
    assert teacher.parameters == count_parameters(built)


def test_unified_model_runs_the_encoder_once_for_all_decoders():
    model = ContinualSegmenter(Encoder(TINY))
    model.add_decoder("a", Decoder(TINY.widths, Genotype.teacher(3), ("liver",)))
    model.add_decoder(
        "b", Decoder(TINY.widths, Genotype.uniform("2d", 0.5, 3), ("spleen", "liver"))
    )
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    out = model(torch.zeros(1, 1, 16, 16, 16))
    assert list(out) == ["a", "b"] and len(calls) == 1
    assert out["b"].organ.shape[1] == 3


def test_unified_model_refuses_bad_tasks():
    model = ContinualSegmenter(Encoder(TINY))
    decoder = Decoder(TINY.widths, Genotype.teacher(3), ("liver",))
    model.add_decoder("t1", decoder)
    with pytest.raises(ValueError, match="already has"):
        model.add_decoder("t1", decoder)
    with pytest.raises(ValueError, match="task name"):
        model.add_decoder("Bad Name", decoder)
    other = Decoder((8, 16, 32, 64, 128), Genotype.teacher(4), ("liver",))
    with pytest.raises(ValueError, match="expects encoder widths"):
        model.add_decoder("t2", other)


def test_convolutions_over_sides_shorter_than_the_kernel_leave_bf16_and_stay_finite():
    # oneDNN's bf16 weight gradient (AVX512-BF16 without AMX) is not finite, at random,
    # over a 2-voxel side under a 3-voxel kernel: such convolutions run in fp32
    torch.manual_seed(0)
    block = conv(64, 64)
    short, long = torch.randn(2, 64, 2, 2, 2), torch.randn(1, 64, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.conv(long).dtype == torch.bfloat16
        assert block.conv(short).dtype == torch.float32  # as it came
        assert block.conv(short.bfloat16()).dtype == torch.bfloat16
        for _ in range(30):
            block.zero_grad()
            block(short).square().mean().backward()
            assert all(torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("channels", [(8, 8), (16, 8), (8, 16)])
def test_narrow_convolutions_run_channels_last_with_the_same_values_and_gradients(channels):
    # oneDNN computes narrow CPU convolutions far faster channels-last; only the
    # convolution changes format: its output and the gradient it passes back stay standard
    torch.manual_seed(0)
    layer = conv(*channels).conv
    x = torch.randn(2, channels[0], 12, 12, 12)
    upstream = torch.randn(2, channels[1], 12, 12, 12)

    def run() -> tuple[torch.Tensor, ...]:
        inp = x.clone().requires_grad_()
        layer.zero_grad()
        out = layer(inp)
        out.backward(upstream)
        assert inp.grad is not None and layer.weight.grad is not None
        return out, inp.grad, layer.weight.grad.clone()

    fast = run()
    with standard_format():
        plain = run()
    assert all(t.is_contiguous() for t in fast[:2])
    assert not fast[0].is_contiguous(memory_format=torch.channels_last_3d)
    for a, b in zip(fast, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)  # sums in another order
