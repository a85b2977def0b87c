"""The ``calibrate`` phase: train a decoder's confidence and anomaly heads, measure its domain.

Only the calibration head learns; the encoder, the decoder's stages and its organ head
are frozen, so the organ prediction is exactly what distillation left.

- Confidence target: whether the decoder's own arg-max label is right at a voxel.
- Anomaly target: the site's lesion labels among the decoder's structures, and synthetic
  anomalies pasted into half of the training patches: a blob of foreign texture (an HU
  shift with smooth noise) inside one labelled structure. A decoder that only saw healthy
  tissue thus learns to flag tissue unlike its training data.

The confidence loss is plain binary cross-entropy over voxels, so that head estimates a
probability (the merge compares it across decoders). The anomaly loss weighs anomalous
voxels, normal voxels of the labelled structures and background alike
(:func:`balanced_bce`): it is a detector, and the merge leaves it out by default. The
site's domain (where its CTs hold the background and each structure, ``core.domain``) is
measured on its CTs and label maps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core import anatomy
from core.data import Case, LabelTable
from core.data.transforms import IMAGE, LABEL, Preprocessing, validation_transforms
from core.domain import SiteDomain, site_domain
from core.local.private import Account, Privacy
from core.local.training import (
    LocalTrainSettings,
    PrivateLoop,
    check_patch,
    local_loop,
    patch_dataset,
)
from core.model import ContinualSegmenter
from core.vocabulary import Group


@dataclass
class CalibrationResult:
    """Losses of a calibration run (total, confidence, anomaly) and the site's domain."""

    losses: list[float]
    confidence_losses: list[float]
    anomaly_losses: list[float]
    domain: SiteDomain | None
    seconds: float


def paste_anomalies(
    image: torch.Tensor,
    label: torch.Tensor,
    generator: torch.Generator,
    hu_per_unit: float = 2000.0,
    rate: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a blob of foreign texture inside one labelled structure of some patches.

    Args:
        image: ``(B, 1, X, Y, Z)`` intensities on [0, 1] (the HU window).
        label: ``(B, 1, X, Y, Z)`` class indices (0: background).
        generator: the random stream.
        hu_per_unit: width of the HU window that maps onto [0, 1].
        rate: share of patches that get a blob.

    Returns:
        The altered images and a float mask of the pasted voxels.
    """
    out, mask = image.clone(), torch.zeros_like(image)
    shape = image.shape[2:]
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"))
    for b in range(image.shape[0]):
        inside = torch.nonzero(label[b, 0] > 0)
        if len(inside) == 0 or torch.rand(1, generator=generator).item() >= rate:
            continue
        centre = inside[torch.randint(len(inside), (1,), generator=generator)][0]
        radii = 1.5 + 3.5 * torch.rand(3, generator=generator)
        offset = (grid - centre.view(3, 1, 1, 1)).float() / radii.view(3, 1, 1, 1)
        organ = label[b, 0] == label[b, 0][tuple(centre)]
        blob = (offset.pow(2).sum(0) <= 1.0) & organ
        sign = 1.0 if torch.rand(1, generator=generator).item() < 0.5 else -1.0
        shift = sign * (30.0 + 90.0 * torch.rand(1, generator=generator).item()) / hu_per_unit
        noise = torch.randn((1, 1, *shape), generator=generator) * 40.0 / hu_per_unit
        texture = F.avg_pool3d(noise, 3, stride=1, padding=1)[0, 0]
        out[b, 0][blob] += shift + texture[blob.cpu()].to(image.device)
        mask[b, 0][blob] = 1.0
    return out.clamp(0.0, 1.0), mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds (0 where it holds nowhere).

    Written without indexing by the mask, so that it batches under ``torch.func.vmap``.
    """
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def balanced_bce(
    logits: torch.Tensor, target: torch.Tensor, groups: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Binary cross-entropy in which each group of voxels weighs the same, whatever its size.

    For the anomaly head the groups are the anomalous voxels, the normal voxels of the
    labelled structures and the background; a group with no voxel counts for nothing.
    Anomalous voxels are a few per thousand: under
    the plain mean the head learnt their prior and scored about 0 everywhere (measured:
    0.00 on lesions, organs and background alike), so the merge's anomaly term changed
    nothing; balanced between anomalous and all other voxels, it learnt "inside an organ"
    (0.89 on healthy organs), since the blobs are pasted into organs. Normal organ tissue
    as a group of its own is what makes it learn the texture.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    present = torch.stack([group.any() for group in groups]).to(loss.dtype)
    parts = torch.stack([masked_mean(loss, group) for group in groups])
    return (parts * present).sum() / present.sum().clamp_min(1.0)


def cases_domain(
    cases: Sequence[Case],
    table: LabelTable,
    prep: Preprocessing,
    structures: Sequence[str],
    window_slices: int,
) -> SiteDomain | None:
    """The domain of a site's CTs for a decoder of ``structures`` (``core.domain``).

    The CTs are preprocessed as for prediction; a structure the site does not label gets
    no row. ``window_slices`` is the decoder's window (patch) along z.
    """
    labelled = [s for s in structures if s in table.structures]
    chain = validation_transforms(prep, table, labelled)
    # the chain numbers the labelled structures from 1; the domain numbers the decoder's
    to_decoder = torch.tensor([0] + [structures.index(s) + 1 for s in labelled])
    volumes = []
    for case in cases:
        item = chain({"case": case})
        label = to_decoder[torch.as_tensor(item[LABEL])[0].long()]
        volumes.append((torch.as_tensor(item[IMAGE])[0], label))
    spacing_z = prep.spacing_mm[2]
    return site_domain(volumes, spacing_z, window_slices * spacing_z, len(structures))


def calibrate_phase(
    model: ContinualSegmenter,
    task: str,
    table: LabelTable,
    cases: Sequence[Case],
    prep: Preprocessing,
    settings: LocalTrainSettings,
    privacy: Privacy | None = None,
    account: Account | None = None,
) -> CalibrationResult:
    """Train the calibration head of ``task``'s decoder on a site's cases; measure its domain.

    With ``privacy`` the head trains under DP-SGD, one patient as the unit, told to
    ``account`` first (:func:`core.local.training.private_optimise`), and no domain is
    measured (``None``).

    Raises:
        ValueError: if there are no cases or the patch does not fit the encoder.
    """
    if not cases:
        raise ValueError(f"{task}: no training cases")
    check_patch(settings.augmentation.patch_size, model.encoder.config.divisor)
    decoder = model.decoder(task)
    lesions = [
        i for i, s in enumerate(decoder.structures, 1) if anatomy.get(s).group == Group.LESION
    ]
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    hu_per_unit = prep.hu_window[1] - prep.hu_window[0]
    model.eval()  # frozen parts keep their normalisation statistics
    parts: dict[str, list[float]] = {"confidence": [], "anomaly": []}

    def paste(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*paste_anomalies(image, label, generator, hu_per_unit), label)

    def head_losses(
        image: torch.Tensor, pasted: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x = decoder.last_features(model.encoder(image))
            organ = decoder.organ_head(x)
        anomaly, confidence = decoder.calibration(x, organ)
        right = (organ.argmax(1, keepdim=True) == label).float()
        known = torch.zeros_like(pasted)
        for i in lesions:
            known = torch.maximum(known, (label == i).float())
        abnormal = torch.maximum(pasted, known)
        healthy = pasted < 0.5  # a pasted blob has no right label to be confident about
        bce = F.binary_cross_entropy_with_logits(confidence, right, reduction="none")
        normal = abnormal < 0.5
        inside = normal & (label > 0)
        anom = balanced_bce(anomaly, abnormal, (~normal, inside, normal & ~inside))
        return masked_mean(bce, healthy), anom

    def case_loss(image: torch.Tensor, pasted: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        conf, anom = head_losses(image, pasted, label)
        return conf + anom

    def loss_of(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        conf, anom = head_losses(*paste(image, label))
        parts["confidence"].append(float(conf.detach()))
        parts["anomaly"].append(float(anom.detach()))
        return conf + anom

    start = time.perf_counter()
    dataset = patch_dataset(cases, table, decoder.structures, prep, settings)
    private = None  # the head's own parameters are what the per-case gradients differentiate
    if privacy is not None:
        head = decoder.calibration_head
        private = PrivateLoop(privacy, head, case_loss, account, paste, generator)
    params = list(decoder.calibration_head.parameters())
    losses = local_loop(params, settings, dataset, loss_of, f"calibrate {task}", private)
    # the domain describes the site's CTs as they are: it cannot be noised per patient at
    # these numbers of patients (see docs/privacy.md), so a private task's decoder has none
    domain = (
        None
        if privacy is not None
        else cases_domain(
            cases, table, prep, decoder.structures, settings.augmentation.patch_size[2]
        )
    )
    return CalibrationResult(
        losses, parts["confidence"], parts["anomaly"], domain, time.perf_counter() - start
    )
