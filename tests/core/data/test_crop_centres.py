"""Crop centres listed once per case: the same draws as MONAI's own listing, cache intact."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import RandCropByPosNegLabeld

from core.data.crop_centres import BACKGROUND, BLOCK, FOREGROUND, CropCentresd, VoxelIndex
from core.data.transforms import Augmentation, Preprocessing, training_transforms
from core.local.training import LocalTrainSettings, patch_dataset
from tests.builders import nnunet_dataset


@pytest.mark.parametrize("voxels", [1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 77])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.5, 1.0])
def test_a_voxel_index_reads_like_the_list_it_keeps(voxels: int, density: float) -> None:
    listed = np.flatnonzero(np.random.default_rng(voxels).random(voxels) < density)
    index = VoxelIndex(torch.from_numpy(listed), voxels)
    assert len(index) == len(listed)
    assert [int(index[k]) for k in range(len(index))] == listed.tolist()
    assert all(index[k].dtype == torch.int64 and index[k].ndim == 0 for k in range(len(index)))
    with pytest.raises(IndexError):
        index[len(listed)]


def _volume() -> dict[Hashable, torch.Tensor]:
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 30, 20), dtype=np.float32)
    image[:, :8] = 0.0  # air: never a background centre
    label = np.zeros_like(image)
    label[:, 20:24, 10:13, 5:9] = 1.0
    label[:, 30:32, 25:28, 15:17] = 2.0
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


def _crop(listed: bool) -> RandCropByPosNegLabeld:
    crop = RandCropByPosNegLabeld(
        ["image", "label"],
        "label",
        (8, 8, 8),
        pos=2,
        neg=1,
        num_samples=3,
        image_key="image",
        fg_indices_key=FOREGROUND if listed else None,
        bg_indices_key=BACKGROUND if listed else None,
    )
    crop.set_random_state(seed=5)
    return crop


def test_the_crop_draws_what_it_draws_when_it_lists_the_voxels_itself() -> None:
    listing, listed = _crop(listed=False), _crop(listed=True)
    volume = _volume()
    centres = CropCentresd("label", "image")(volume)
    for _ in range(30):
        for ours, theirs in zip(listed(centres), listing(volume), strict=True):
            assert torch.equal(ours["image"], theirs["image"])
            assert torch.equal(ours["label"], theirs["label"])


def test_draws_never_change_the_cached_volumes(tmp_path: Path) -> None:
    """The training cache hands its volumes out uncopied: no draw may write into them."""
    ds = nnunet_dataset(tmp_path / "D", n_cases=2)
    aug = Augmentation(patch_size=(8, 8, 8))
    settings = LocalTrainSettings(batch_size=2, augmentation=aug, progress=False)
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0))
    structures = ds.labels.structures
    ours = patch_dataset(ds.cases, ds.labels, structures, prep, settings)
    chain = training_transforms(prep, aug, ds.labels, settings.seed, structures)
    copied = CacheDataset([{"case": c} for c in ds.cases], chain, progress=False, copy_cache=True)
    for i in [0, 1, 1, 0] * 10:
        for a, b in zip(ours[i], copied[i], strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
