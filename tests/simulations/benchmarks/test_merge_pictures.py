import torch

from core.scores import ScoreSums
from simulations.benchmarks.merge_pictures import failing, save_picture


def _scores(**dice):
    sums = ScoreSums()
    for structure, value in dice.items():
        sums.dice[structure] = [value, 1.0]
    return sums


def test_a_structure_fails_where_the_merge_is_clearly_below_its_best_decoder():
    scores = {
        "confidence": _scores(liver=0.80, brain=0.90, heart=0.50),
        "alone:abdomen": _scores(liver=0.84),  # 0.04 below: within the margin
        "alone:head": _scores(brain=0.97),  # 0.07 below: fails
        "alone:thorax": _scores(heart=0.60),
        "alone:trunk": _scores(heart=0.70),  # the best of two decoders that know the heart
    }
    assert failing(scores, "confidence", "alone:") == [
        ("brain", "alone:head"),
        ("heart", "alone:trunk"),
    ]


def test_the_picture_is_a_png_of_the_ct_and_each_label_map(tmp_path):
    image = torch.rand(8, 6, 10)
    labels = torch.zeros(8, 6, 10, dtype=torch.long)
    labels[2:5, 2:4, 3:7] = 1
    panels = [("merged", labels, ["liver"]), ("alone", labels * 0, ["liver"])]
    path = save_picture(tmp_path / "x" / "case.png", image, panels, labels == 1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
