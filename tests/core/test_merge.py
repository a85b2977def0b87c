import dataclasses
import itertools

import pytest
import torch

from core.merge import (
    UNSCORED_SKILL,
    Calibration,
    DecoderVote,
    MergeSettings,
    output_structures,
)
from core.merge_rules import merge

HIGH, LOW = 3.0, -3.0  # confidence / anomaly logits: sigmoid 0.95 and 0.05


def _vote(task, structures, *probs, conf=None, anomaly=None, domain=None, calibrated=True):
    """A decoder over N voxels along the last axis: per-channel probability rows, per-voxel
    head logits and domain scores (whatever it says; ``None``: no domain)."""
    organ = torch.log(torch.tensor(probs, dtype=torch.float32))[None, :, None, None, :]
    n = organ.shape[-1]

    def head(values):
        v = torch.full((n,), LOW) if values is None else torch.tensor(values, dtype=torch.float32)
        return v.view(1, 1, 1, 1, n)

    vote = DecoderVote.from_logits(
        task, tuple(structures), organ, head(anomaly), head(conf), calibrated
    )
    if domain is None:
        return vote
    scores = torch.tensor(domain, dtype=torch.float32).expand(1 + len(structures), n)
    return dataclasses.replace(vote, domain=scores)


def _names(votes, settings=None, order=None):
    settings = settings or MergeSettings()
    structures = output_structures([v.structures for v in (order or votes)])
    label = merge(order or votes, structures, settings)
    names = ["background", *structures]
    return [names[i] for i in label.flatten().tolist()]


def test_the_confident_decoder_wins_a_contested_voxel():
    # voxel 0: whole-body says liver, confident; abdomen says stomach, unsure.
    # voxel 1: the same proposals with the confidences swapped.
    wholebody = _vote("wholebody", ["liver"], [0.3, 0.3], [0.7, 0.7], conf=[HIGH, LOW])
    abdomen = _vote("abdomen", ["stomach"], [0.4, 0.4], [0.6, 0.6], conf=[LOW, HIGH])
    assert _names([wholebody, abdomen]) == ["liver", "stomach"]


def test_where_two_decoders_disagree_the_one_that_learnt_the_structure_better_decides():
    # the default demo's bf16 draw: on tumour CTs the tumour task's decoder (validation Dice
    # 0.42 on the left kidney) says a confident background over kidneys that the whole-body
    # decoder (0.79), a little farther from its sites' CTs, finds: its confidence must not
    # silence them
    wholebody = _vote("wholebody", ["kidney_left"], [0.2], [0.8], conf=[0.0], domain=[0.7])
    tumour = _vote(
        "tumour", ["kidney_left", "kidney_tumor"], [0.96], [0.02], [0.02], conf=[HIGH], domain=[0.6]
    )
    wholebody = dataclasses.replace(wholebody, skill=(0.79,))
    assert _names([wholebody, dataclasses.replace(tumour, skill=(0.42, 0.1))]) == ["kidney_left"]
    # a decoder that learnt the kidney better denies it
    assert _names([wholebody, dataclasses.replace(tumour, skill=(0.9, 0.1))]) == ["background"]
    # skills this close are within a validation's noise: the claim stands
    close = dataclasses.replace(tumour, skill=(0.85, 0.1), domain=torch.full((3, 1), 0.7))
    assert _names([wholebody, close]) == ["kidney_left"]
    # and the distance counts: far from its sites' CTs the whole-body decoder yields
    far = dataclasses.replace(wholebody, domain=torch.full((2, 1), 1.5))
    assert _names([far, dataclasses.replace(tumour, skill=(0.42, 0.1))]) == ["background"]


def test_where_the_later_sites_scored_both_decoders_the_same_cts_rank_them():
    # overlap_heavy: the tumour task's decoder (0.754 on its CTs, nearer home) and the trunk
    # decoder (0.739 on the trunk's CTs) disagree about the left kidney's extent (voxels 0
    # and 2); on the tumour task's validation CTs the trunk decoder scored 0.80
    trunk = _vote(
        "trunk", ["kidney_left"], [0.9, 0.2, 0.2], [0.1, 0.8, 0.8], conf=[HIGH] * 3, domain=[1.2]
    )
    tumour = _vote(
        "tumour", ["kidney_left"], [0.1, 0.2, 0.9], [0.9, 0.8, 0.1], conf=[HIGH] * 3, domain=[0.6]
    )
    trunk = dataclasses.replace(trunk, skill=(0.739,))
    tumour = dataclasses.replace(tumour, skill=(0.7535,))
    # nearer home, the tumour decoder's word decides where they disagree
    assert _names([trunk, tumour]) == ["kidney_left", "kidney_left", "background"]
    scored = dataclasses.replace(tumour, peers={"trunk": {"kidney_left": 0.80}})
    assert _names([trunk, scored]) == ["background", "kidney_left", "kidney_left"]
    # a lower peer skill changes nothing (its CTs may reach beyond the trunk's domain)
    worse = dataclasses.replace(tumour, peers={"trunk": {"kidney_left": 0.70}})
    assert _names([trunk, worse]) == _names([trunk, tumour])


def test_a_claim_the_scorers_sites_saw_win_counts_as_at_home_in_the_contest():
    # reversed_default (fp32, a new draw): on whole-body CTs the tumour task's decoder,
    # far from its sites' abdomens, finds the right kidney; the whole-body decoder, at home,
    # never learnt it and says liver there; its sites scored the tumour decoder's kidney
    # 0.20 against its own 0.06
    wholebody = _vote("wholebody", ["liver", "kidney_right"], [0.1], [0.8], [0.1], domain=[0.3])
    tumour = _vote("tumour", ["kidney_right"], [0.2], [0.8], domain=[1.8])
    wholebody = dataclasses.replace(wholebody, skill=(0.8, 0.06))
    tumour = dataclasses.replace(tumour, skill=(0.8,))
    assert _names([wholebody, tumour]) == ["liver"]
    scored = dataclasses.replace(wholebody, peers={"tumour": {"kidney_right": 0.20}})
    assert _names([scored, tumour]) == ["kidney_right"]


def test_structures_one_decoder_knows_are_never_vetoed():
    # the lung decoder's background says nothing about the liver, however confident
    liver = _vote("a", ["liver"], [0.4], [0.6], conf=[LOW])
    lung = _vote("b", ["lung_left"], [0.9], [0.1], conf=[HIGH])
    assert _names([liver, lung]) == ["liver"]


def test_a_lesion_inside_its_organ_keeps_the_lesion_label():
    # a healthy-tissue decoder is more confident that it sees liver; the tumour
    # decoder's tumour still wins, as the tumour lies inside the liver
    healthy = _vote("wholebody", ["liver"], [0.1], [0.9], conf=[HIGH])
    tumour = _vote("tumour", ["liver", "liver_tumor"], [0.2], [0.2], [0.6], conf=[0.0])
    assert _names([healthy, tumour]) == ["liver_tumor"]
    # but a decoder that knows tumours, learnt them better than the tumour decoder, and
    # says plain liver does veto it
    other = _vote("other", ["liver", "liver_tumor"], [0.1], [0.8], [0.1], conf=[HIGH])
    other = dataclasses.replace(other, skill=(0.9, 0.8))
    unsure = dataclasses.replace(tumour, skill=(0.9, 0.5))
    assert _names([healthy, unsure, other]) == ["liver"]


def test_anomaly_lowers_trust_only_of_healthy_only_decoders():
    # a contested voxel; the healthy decoder is confident but finds the tissue anomalous
    healthy = _vote("wholebody", ["liver"], [0.2], [0.8], conf=[HIGH], anomaly=[HIGH])
    tumour = _vote("tumour", ["kidney_left", "kidney_tumor"], [0.2], [0.7], [0.1], conf=[1.0])
    weighed = MergeSettings(anomaly_weight=1.0)
    assert _names([healthy, tumour], weighed) == ["kidney_left"]
    assert _names([healthy, tumour]) == ["liver"]  # the default leaves the term out
    # the tumour decoder's own anomaly score does not lower its trust
    anomalous = _vote(
        "tumour", ["kidney_left", "kidney_tumor"], [0.2], [0.7], [0.1], conf=[1.0], anomaly=[HIGH]
    )
    assert _names([healthy, anomalous], weighed) == ["kidney_left"]


def test_a_gated_decoder_neither_proposes_nor_objects():
    head = _vote(
        "head",
        ["brain", "liver"],
        [0.1, 0.9],
        [0.9, 0.05],
        [0.0, 0.05],
        conf=[HIGH, HIGH],
        domain=[9.0, 2.5],  # both above the default domain factor (2)
    )
    head = dataclasses.replace(head, skill=(0.99, 0.99))  # it finds livers: its denial counts
    trunk = _vote("trunk", ["liver"], [0.4, 0.4], [0.6, 0.6], conf=[LOW, LOW], domain=[2.0, 2.0])
    trunk = dataclasses.replace(trunk, skill=(0.4,))
    # voxel 0: the gated head decoder's confident brain does not count; trunk's liver stands
    # voxel 1: its background would veto trunk's liver, but it is silent
    assert _names([head, trunk]) == ["liver", "liver"]
    assert _names([head, trunk], MergeSettings(gating=False)) == ["brain", "background"]
    ungated = MergeSettings(domain_factor=3.0, domain_weight=1.0)
    assert _names([head, trunk], ungated) == ["liver", "background"]


def test_uncalibrated_decoders_are_trusted_by_their_softmax_probability():
    a = _vote("a", ["liver"], [0.45], [0.55], conf=[HIGH], calibrated=False)
    b = _vote("b", ["stomach"], [0.2], [0.8], conf=[LOW], calibrated=False)
    assert _names([a, b]) == ["stomach"]


def test_the_merge_does_not_depend_on_decoder_order():
    torch.manual_seed(0)
    n = 500
    specs = [
        ("a", ["liver", "spleen"]),
        ("b", ["liver", "liver_tumor", "kidney_left"]),
        ("c", ["kidney_left", "lung_left"]),
    ]
    votes = []
    for task, structures in specs:
        probs = torch.softmax(torch.randn(len(structures) + 1, n) * 2, dim=0).tolist()
        votes.append(
            _vote(
                task,
                structures,
                *probs,
                conf=torch.randn(n).tolist(),
                anomaly=torch.randn(n).tolist(),
                domain=(torch.rand(n) * 2.5).tolist(),
            )
        )
    for rule in ("confidence", "highest_probability"):
        settings = MergeSettings(rule=rule)
        results = {tuple(_names(votes, settings, list(p))) for p in itertools.permutations(votes)}
        assert len(results) == 1
        assert len(set(next(iter(results)))) > 3  # a real mixture of labels, not all one


def test_highest_probability_and_last_decoder_rules():
    a = _vote(
        "a", ["liver", "spleen"], [0.8, 0.2, 0.3, 0.1], [0.1, 0.6, 0.2, 0.8], [0.1, 0.2, 0.5, 0.1]
    )
    b = _vote(
        "b",
        ["kidney_left", "liver"],
        [0.7, 0.05, 0.9, 0.1],
        [0.2, 0.9, 0.05, 0.1],
        [0.1, 0.05, 0.05, 0.8],
    )
    assert _names([a, b], MergeSettings(rule="highest_probability")) == [
        "background",
        "kidney_left",
        "spleen",
        "liver",
    ]
    assert _names([a, b], MergeSettings(rule="last_decoder")) == [
        "background",
        "kidney_left",
        "spleen",
        "liver",
    ]
    assert _names([b, a], MergeSettings(rule="last_decoder"), [b, a]) == [
        "background",
        "liver",
        "spleen",
        "liver",
    ]


def test_merge_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="rule 'vote'"):
        MergeSettings(rule="vote")
    with pytest.raises(ValueError, match="anomaly_weight"):
        MergeSettings(anomaly_weight=2.0)
    with pytest.raises(ValueError, match="unknown keys"):
        MergeSettings.from_json({"rule": "confidence", "margin": 3})
    assert MergeSettings.from_json(MergeSettings(gating=False).to_json()) == MergeSettings(
        gating=False
    )


def test_a_decoder_that_never_learnt_a_structure_cannot_veto_it():
    # the whole-body decoder knows the kidney by name but scored Dice 0 on it in validation
    wholebody = _vote("wholebody", ["kidney_left"], [0.95], [0.05], conf=[HIGH])
    abdomen = _vote("abdomen", ["kidney_left"], [0.3], [0.7], conf=[0.0])
    abdomen = dataclasses.replace(abdomen, skill=(0.7,))
    wholebody = dataclasses.replace(wholebody, skill=(0.9,))
    assert _names([wholebody, abdomen]) == ["background"]
    unskilled = dataclasses.replace(wholebody, skill=(0.0,))
    assert _names([unskilled, abdomen]) == ["kidney_left"]


def test_calibration_records_round_trip_and_refuse_bad_skills():
    calibration = Calibration(True, {"liver": 0.8})
    assert Calibration.from_json(calibration.to_json()) == calibration
    saved_before = {"calibrated": True, "body_range": {"lo": 0.0, "hi": 1.0}, "skill": {}}
    assert Calibration.from_json(saved_before) == Calibration(True)  # retired key ignored
    assert calibration.skills(["liver", "kidney_left"]) == (0.8, UNSCORED_SKILL)
    assert Calibration().skills(["liver"]) == (1.0,)
    with pytest.raises(ValueError, match="skill"):
        Calibration.from_json({"calibrated": True, "skill": {"liver": 1.5}})
    peers = Calibration(True, {"liver": 0.8}, {"organs": {"liver": 0.7}})
    assert Calibration.from_json(peers.to_json()) == peers
    with pytest.raises(ValueError, match=r"peers\.organs"):
        Calibration.from_json({"calibrated": True, "peers": {"organs": {"liver": -0.1}}})


def test_a_decoder_painting_organs_outside_its_domain_cannot_silence_the_one_trained_there():
    # a head CT: the abdominal decoder, which never saw a head, paints a confident liver
    # over the brain and a stomach beside it; the head decoder finds the brain
    abdomen = _vote(
        "abdomen",
        ["liver", "stomach"],
        [0.02, 0.1, 0.9],
        [0.96, 0.05, 0.05],
        [0.02, 0.85, 0.05],
        conf=[HIGH, HIGH, HIGH],
        domain=[6.0, 6.0, 6.0],  # its slabs looked nothing like a head
    )
    head = _vote(
        "head",
        ["brain"],
        [0.3, 0.3, 0.9],
        [0.7, 0.7, 0.1],
        conf=[0.0, 0.0, HIGH],
        domain=[0.5, 0.5, 0.5],
    )
    assert _names([abdomen, head]) == ["brain", "brain", "background"]
    # the failure it prevents: ungated, the confident false organs win the head
    assert _names([abdomen, head], MergeSettings(gating=False)) == [
        "liver",
        "stomach",
        "background",
    ]


def test_claims_are_weighed_on_distances_not_on_each_decoders_own_threshold():
    # a pelvis CT: a head decoder, whose sites' CTs (head and neck) varied widely, claims
    # brain on the sacrum just inside its gate; the pelvis decoder, whose sites' CTs were
    # alike, finds the sacrum at a similar score that stands for half the distance
    head = _vote("head", ["brain"], [0.05], [0.95], conf=[HIGH], domain=[1.8])
    pelvis = _vote("pelvis", ["sacrum", "hip_left"], [0.3], [0.4], [0.3], conf=[HIGH], domain=[1.5])
    head = dataclasses.replace(head, domain_scale=0.2)
    pelvis = dataclasses.replace(pelvis, domain_scale=0.1)
    assert _names([head, pelvis]) == ["sacrum"]
    # the failure it prevents: on scores over each decoder's own threshold, brain won
    alike = [dataclasses.replace(v, domain_scale=1.0) for v in (head, pelvis)]
    assert _names(alike) == ["brain"]


def test_a_decoder_that_never_learnt_a_structure_does_not_take_its_voxels_for_a_neighbour():
    # the whole-body decoder labels the aorta but never learnt it (validation Dice 0): at
    # an aortic voxel it says lung, more sure than the thoracic decoder says aorta; the
    # thoracic decoder does not label lungs, so neither can veto the other
    wholebody = _vote("wholebody", ["lung_left", "aorta"], [0.05], [0.9], [0.05], conf=[HIGH])
    thorax = _vote("thorax", ["aorta"], [0.4], [0.6], conf=[0.0])
    unlearnt = dataclasses.replace(wholebody, skill=(0.9, 0.0))
    assert _names([unlearnt, thorax]) == ["aorta"]
    # one that did learn the aorta denies it with weight: its surer lung stands
    learnt = dataclasses.replace(wholebody, skill=(0.9, 0.8))
    assert _names([learnt, thorax]) == ["lung_left"]


def test_a_structure_the_decoder_at_home_never_learnt_is_borrowed_from_the_one_that_did():
    # voxel 0: trunk CTs, where the abdominal decoder (out of its domain, score 4) is the
    # only one that learnt the left kidney; the trunk decoder labels it (its sites saw it
    # here: score 0.5) but never learnt it. Voxel 1: a brain in an abdomen: no decoder at
    # home labels brain, so the head decoder stays silent out of its domain.
    abdomen = _vote("abdomen", ["kidney_left"], [0.2, 0.9], [0.8, 0.1], conf=[HIGH, HIGH])
    abdomen = dataclasses.replace(
        abdomen, skill=(0.8,), domain=torch.tensor([[4.0, 4.0], [4.0, 4.0]])
    )
    trunk = _vote("trunk", ["liver", "kidney_left"], [0.9, 0.9], [0.05, 0.05], [0.05, 0.05])
    trunk = dataclasses.replace(trunk, skill=(0.8, 0.0), domain=torch.full((3, 2), 0.5))
    head = _vote("head", ["brain"], [0.9, 0.2], [0.1, 0.8], conf=[HIGH, HIGH])
    head = dataclasses.replace(head, skill=(0.9,), domain=torch.full((2, 2), 4.0))
    assert _names([abdomen, trunk, head]) == ["kidney_left", "background"]
    # a trunk decoder that learnt the kidney as well keeps the gate shut
    learnt = dataclasses.replace(trunk, skill=(0.8, 0.8))
    assert _names([abdomen, learnt, head]) == ["background", "background"]
