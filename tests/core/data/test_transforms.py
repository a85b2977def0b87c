import numpy as np
import pytest
import torch

from core.data import CaseArrays, DataError, write_nnunet
from core.data.nifti import read_header
from core.data.transforms import (
    Augmentation,
    Preprocessing,
    training_transforms,
    validation_transforms,
)
from tests.builders import case_arrays, nnunet_dataset

LPS_AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])
LPS_AFFINE[:2, 3] = 30.0  # voxel 0 of an LPS volume sits where RAS voxel 15 does


def _twins(tmp_path):
    ras = case_arrays("ras", 0)
    lps = CaseArrays(
        "lps", ras.image[::-1, ::-1, :].copy(), ras.label[::-1, ::-1, :].copy(), LPS_AFFINE
    )
    a = write_nnunet(tmp_path / "RAS", ["liver", "spleen"], [ras])
    b = write_nnunet(tmp_path / "LPS", ["liver", "spleen"], [lps])
    return a, b


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.0, 2.5, 4.0)])
def test_lps_input_is_handled_like_its_ras_twin(tmp_path, spacing):
    ras, lps = _twins(tmp_path)
    assert read_header(lps.cases[0].image).orientation == "LPS"
    chain = validation_transforms(Preprocessing(spacing_mm=spacing), ras.labels)
    out_ras = chain({"case": ras.cases[0]})
    out_lps = chain({"case": lps.cases[0]})
    assert torch.allclose(out_ras["image"], out_lps["image"], atol=1e-5)
    assert torch.equal(out_ras["label"], out_lps["label"])
    assert torch.allclose(out_ras["image"].affine, out_lps["image"].affine)


def test_preprocessing_resamples_and_windows(tmp_path):
    ds = nnunet_dataset(tmp_path / "D", n_cases=1)
    out = validation_transforms(Preprocessing(spacing_mm=(4.0, 4.0, 4.0)), ds.labels)(
        {"case": ds.cases[0]}
    )
    assert tuple(out["image"].shape) == (1, 8, 8, 8)
    assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert out["case_id"] == "case_000"


def _patches(ds, seed):
    chain = training_transforms(
        Preprocessing(spacing_mm=(2.0, 2.0, 2.0)),
        Augmentation(patch_size=(8, 8, 8)),
        ds.labels,
        seed=seed,
    )
    return [chain({"case": case}) for case in ds.cases]


def test_training_chain_is_deterministic_given_a_seed(tmp_path):
    ds = nnunet_dataset(tmp_path / "D", n_cases=2)
    first, again, other = _patches(ds, 7), _patches(ds, 7), _patches(ds, 8)
    flat = [p["image"] for samples in first for p in samples]
    assert all(
        torch.equal(a, b) for a, b in zip(flat, [p["image"] for s in again for p in s], strict=True)
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(flat, [p["image"] for s in other for p in s], strict=True)
    )


def test_training_patches_have_the_patch_size_and_favour_foreground(tmp_path):
    ds = nnunet_dataset(tmp_path / "D", n_cases=3)
    aug = Augmentation(patch_size=(8, 8, 8), samples_per_case=4, foreground_ratio=1.0)
    chain = training_transforms(Preprocessing(spacing_mm=(2.0, 2.0, 2.0)), aug, ds.labels, seed=0)
    for case in ds.cases:
        samples = chain({"case": case})
        assert len(samples) == 4
        for sample in samples:
            assert tuple(sample["image"].shape) == (1, 8, 8, 8)
            assert tuple(sample["label"].shape) == (1, 8, 8, 8)
            assert sample["label"].max() > 0  # centred on a labelled voxel


def test_bad_files_surface_as_data_errors_naming_the_file(tmp_path):
    ds = nnunet_dataset(tmp_path / "D", n_cases=1)
    ds.cases[0].image.write_bytes(b"garbage")
    chain = validation_transforms(Preprocessing(), ds.labels)
    with pytest.raises(Exception) as info:
        chain({"case": ds.cases[0]})
    cause = info.value
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__
    assert isinstance(cause, DataError) and cause.path == ds.cases[0].image


def test_preprocessing_round_trips_through_json():
    prep = Preprocessing(spacing_mm=(0.8, 0.8, 2.5), hu_window=(-200.0, 300.0))
    assert Preprocessing.from_json(prep.to_json()) == prep
