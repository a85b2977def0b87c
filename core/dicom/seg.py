"""Write a predicted label map as a DICOM Segmentation (highdicom) of its source CT series.

One binary segment per structure present in the label map, labelled with the structure's
name, coded with its SNOMED CT concept (``core.dicom.codes``) and coloured as in the label
tables. The segmentation references the source series, so viewers overlay it on the CT.
Its content is identified as the standard asks (ContentLabel, ContentDescription and
Content Creator's Name, type 2: the software unless the user names a person).
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName

from core.dicom.codes import structure_code
from core.dicom.ct_writer import MANUFACTURER
from core.io import atomic_write_bytes
from core.label_files import structure_color

ALGORITHM_NAME = "continual-segment-fl"
"""How the segmentations name the algorithm that made them."""
CONTENT_CREATOR = "csfl^continual-segment-fl"
"""The default Content Creator's Name (a person name: family ``csfl``, given the software)."""
CONTENT_LABEL = "AUTOSEG"
CONTENT_DESCRIPTION = f"Automatic segmentation by {ALGORITHM_NAME}"
PERSON_NAME_MAX = 64
"""Most characters in one component group of a person name (VR PN)."""


def creator_name(value: str) -> str:
    """Check a Content Creator's Name: a DICOM person name such as ``Doe^Jane``.

    Raises:
        ValueError: naming the value, for an empty or over-long name, or one with a
            backslash or a control character.
    """
    if not value.strip() or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(
            f"content creator {value!r}: expected a person name such as Doe^Jane "
            "(no backslash or control characters)"
        )
    if any(len(group) > PERSON_NAME_MAX for group in value.split("=")):
        raise ValueError(f"content creator {value!r}: at most {PERSON_NAME_MAX} characters")
    return str(PersonName(value))


def present_labels(
    path: str | Path,
    labels: NDArray[np.integer],
    structures: Sequence[str],
    sources: Sequence[pydicom.Dataset],
) -> list[int]:
    """The label ids present in a label map on the sources' grid, checked.

    Args:
        path: the output to be written, named in errors.
        labels: ``[column, row, slice]``, slice ``k`` on ``sources[k]`` (the grid of
            :func:`core.dicom.series.read_series`); 0 is background.
        structures: label ``i + 1`` is ``structures[i]``.
        sources: the CT series' datasets in slice order.

    Raises:
        ValueError: naming ``path``, if the shape does not match the sources, a label has
            no structure, or no structure is present.
    """
    if not sources:
        raise ValueError(f"{path}: DICOM output needs the source CT series")
    expected = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if labels.shape != expected:
        raise ValueError(
            f"{path}: label map of shape {labels.shape}, the source series is {expected}"
        )
    present = [int(v) for v in np.unique(labels) if v != 0]
    if any(v < 0 or v > len(structures) for v in present):
        raise ValueError(f"{path}: label ids {present} exceed the {len(structures)} structures")
    if not present:
        raise ValueError(f"{path}: no structure was found in this CT; nothing written")
    return present


def segment_description(number: int, name: str, version: str) -> hd.seg.SegmentDescription:
    """A segment for one structure: label, SNOMED CT codes, colour, the algorithm."""
    code = structure_code(name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=version
        ),
        anatomic_regions=[code.region] if code.region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*structure_color(name)),
    )
    if code.modifier is not None:
        # highdicom has no parameter for it; the attribute is the standard's own.
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(code.modifier)
        ]
    return description


def write_seg(
    path: str | Path,
    labels: NDArray[np.integer],
    structures: Sequence[str],
    sources: Sequence[pydicom.Dataset],
    *,
    version: str = "1",
    series_description: str = "Segmentation",
    content_creator: str = CONTENT_CREATOR,
) -> Path:
    """Write a DICOM Segmentation of the structures present in ``labels``, atomically.

    Args:
        path: the ``.dcm`` file to write.
        labels: the label map ``[column, row, slice]`` on the sources' grid.
        structures: label ``i + 1`` is ``structures[i]``, vocabulary names.
        sources: the source CT datasets in slice order (from ``read_series``).
        version: the algorithm version recorded (e.g. the bundle's encoder hash).
        series_description: SeriesDescription of the new series.
        content_creator: Content Creator's Name, a person name (``Family^Given``).

    Returns:
        The path written.

    Raises:
        ValueError: see :func:`present_labels` and :func:`creator_name`.
    """
    creator = creator_name(content_creator)
    present = present_labels(path, labels, structures, sources)
    lookup = np.zeros(len(structures) + 1, dtype=np.uint16)
    lookup[present] = np.arange(1, len(present) + 1)
    dtype = np.uint8 if len(present) < 256 else np.uint16
    frames = lookup[labels].transpose(2, 1, 0).astype(dtype)  # [slice, row, column]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            segment_description(n, structures[v - 1], version) for n, v in enumerate(present, 1)
        ],
        series_instance_uid=generate_uid(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=version,
        device_serial_number="0",
        series_description=series_description,
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        content_creator_name=creator,
    )
    buffer = BytesIO()
    seg.save_as(buffer)
    return atomic_write_bytes(path, buffer.getvalue())
