"""MONAI transform chains: load, orient to RAS, resample, window HU, crop/pad, augment.

A chain's random transforms draw from one generator seeded by the caller, so the same
seed gives the same patches. Augmentation never flips left-right: that would swap
``kidney_left`` and ``kidney_right``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    ToTensord,
    Transform,
)

from core.data.crop_centres import BACKGROUND, FOREGROUND, CropCentresd
from core.data.dataset import Case, LabelTable, load_case
from core.data.nifti import Header, Volume, check_voxel_count, memory_named, read_image
from core.data.problems import DataError

IMAGE, LABEL = "image", "label"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's world frame: +x right, +y anterior


@dataclass(frozen=True)
class Preprocessing:
    """How a CT reaches the network's input space; stored with a model, like nnU-Net plans.

    Attributes:
        spacing_mm: target voxel size (RAS axes).
        hu_window: Hounsfield units mapped linearly onto [0, 1], clipped outside; the
            lower bound is air, so zero padding is air too.
    """

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or not all(
            math.isfinite(s) and 0.05 <= s <= 50.0 for s in self.spacing_mm
        ):
            raise ValueError(f"spacing {self.spacing_mm}: expected 3 values in [0.05, 50] mm")
        lo, hi = self.hu_window
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"HU window {self.hu_window}: expected finite low < high")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_json`."""
        sx, sy, sz = (float(v) for v in obj["spacing_mm"])
        lo, hi = (float(v) for v in obj["hu_window"])
        return cls((sx, sy, sz), (lo, hi))


@dataclass(frozen=True)
class Augmentation:
    """Training patches and their augmentation.

    Attributes:
        patch_size: voxels per patch side (after resampling).
        samples_per_case: patches cropped from each loaded case.
        foreground_ratio: share of patches centred on a labelled voxel.
        rotate_rad: largest rotation about each axis.
        scale: largest relative zoom.
    """

    patch_size: tuple[int, int, int] = (64, 64, 64)
    samples_per_case: int = 2
    foreground_ratio: float = 2 / 3
    rotate_rad: float = 0.2
    scale: float = 0.1


def _tensor(volume: Volume) -> MetaTensor:
    """A channel-first float32 tensor of the volume, with its affine."""
    # one pass from the file's (Fortran-ordered) array to a C-ordered float32 copy: no
    # C-ordered copy in the file's type first (0.5 GB for a 512 x 512 x 1000 int16 CT)
    array = np.ascontiguousarray(volume.array[None], dtype=np.float32)
    return MetaTensor(
        torch.from_numpy(array),
        affine=torch.as_tensor(volume.header.affine, dtype=torch.float64),
        meta={"filename_or_obj": str(volume.path)},
    )


class LoadCased(MapTransform):
    """Load ``data["case"]`` (a :class:`Case`) into channel-first ``image``/``label`` tensors.

    The case is checked as :func:`core.data.dataset.load_case` checks it; a bad file
    raises :class:`core.data.problems.DataError` naming it. Labels become class indices
    1..K in the order of ``classes`` (default: the table's), which is what a decoder's
    channels mean; other structures become background. Without a table (for
    prediction) only ``image`` is loaded.
    """

    def __init__(self, table: LabelTable | None, classes: Sequence[str] | None = None) -> None:
        super().__init__(keys=["case"])
        self.table = table
        self.classes = classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the case by its tensors."""
        case: Case = data["case"]
        out: dict[Hashable, Any] = {k: v for k, v in data.items() if k != "case"}
        out["case_id"] = case.case_id
        if self.table is None:
            out[IMAGE] = _tensor(read_image(case.image))
            return out
        loaded = load_case(case, self.table)
        out[IMAGE] = _tensor(loaded.image)
        if loaded.label is not None:
            indices = self.table.to_indices(loaded.label, self.classes)
            label = Volume(loaded.image.header, indices)
            out[LABEL] = _tensor(label)
        return out


def preprocessing(
    prep: Preprocessing, table: LabelTable | None, classes: Sequence[str] | None = None
) -> list[Transform]:
    """Load, orient to RAS, resample to ``prep.spacing_mm``, window HU to [0, 1].

    With a label table the case's label map comes along (nearest-neighbour resampling);
    without one, only the image.
    """
    keys = [IMAGE, LABEL] if table is not None else [IMAGE]
    modes = ["bilinear", "nearest"][: len(keys)]
    lo, hi = prep.hu_window
    return [
        LoadCased(table, classes),
        Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS),
        Spacingd(keys=keys, pixdim=prep.spacing_mm, mode=modes, dtype=np.float32),
        ScaleIntensityRanged(keys=IMAGE, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
    ]


def prepare_image(prep: Preprocessing, header: Header) -> dict[Hashable, Any]:
    """Load and preprocess one CT for prediction, refusing one too large once resampled.

    Args:
        prep: the model's preprocessing.
        header: the CT's checked header (:func:`core.data.nifti.read_header`).

    Raises:
        DataError: naming the file, if it is unreadable, holds NaN, would exceed the voxel
            cap at the model's spacing, or does not fit in memory.
    """
    # Physical volume over the target voxel's volume: the resampled voxel count in any
    # orientation, known before anything is resampled.
    resampled = math.prod(header.shape) * math.prod(header.spacing) / math.prod(prep.spacing_mm)
    check_voxel_count(header.path, resampled, f"resampled to {prep.spacing_mm} mm, the CT")
    chain = Compose(preprocessing(prep, None), log_stats=False)
    with memory_named(header.path, f"preprocess {header.shape} voxels"):
        try:
            item: dict[Hashable, Any] = chain({"case": Case("input", header.path)})
        except RuntimeError as e:  # MONAI wraps what a transform raises
            cause = e.__cause__
            if isinstance(cause, DataError | MemoryError):
                raise cause from None
            raise
    return item


def validation_transforms(
    prep: Preprocessing, table: LabelTable, classes: Sequence[str] | None = None
) -> Compose:
    """Whole preprocessed volumes with labels, for validation."""
    return Compose(preprocessing(prep, table, classes))


def training_transforms(
    prep: Preprocessing,
    aug: Augmentation,
    table: LabelTable,
    seed: int,
    classes: Sequence[str] | None = None,
) -> Compose:
    """Preprocessing, then foreground-favouring patches with spatial and intensity augmentation.

    Args:
        prep: the preprocessing shared with validation and prediction.
        aug: patch size and augmentation strength.
        table: the dataset's label table.
        seed: seeds every random transform of the chain.
        classes: the structures to learn, in channel order (default: the table's).
    """
    keys = [IMAGE, LABEL]
    pos = aug.foreground_ratio
    chain = [
        *preprocessing(prep, table, classes),
        SpatialPadd(keys=keys, spatial_size=aug.patch_size),  # 0 is air after windowing
        CropCentresd(label_key=LABEL, image_key=IMAGE),  # cached: listed once, not every draw
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=aug.patch_size,
            pos=pos,
            neg=1.0 - pos,
            num_samples=aug.samples_per_case,
            image_key=IMAGE,
            fg_indices_key=FOREGROUND,
            bg_indices_key=BACKGROUND,
        ),
        RandAffined(
            keys=keys,
            prob=0.2,
            rotate_range=(aug.rotate_rad,) * 3,
            scale_range=(aug.scale,) * 3,
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys=IMAGE, factors=0.1, prob=0.5),
        RandShiftIntensityd(keys=IMAGE, offsets=0.05, prob=0.5),
        RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.15),
        RandGaussianNoised(keys=IMAGE, std=0.01, prob=0.15),
        RandGaussianSmoothd(
            keys=IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.1
        ),
        # plain tensors into the network: every operation on a MetaTensor passes through
        # Python (__torch_function__), about a third of a step's time on small patches
        ToTensord(keys=keys, track_meta=False),
    ]
    composed = Compose(chain)
    composed.set_random_state(seed=seed)
    return composed
