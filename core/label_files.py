"""A prediction's label table as JSON and as colour tables for 3D Slicer and ITK-SNAP."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core import anatomy
from core.io import atomic_write_bytes, atomic_write_json


def structure_color(name: str) -> tuple[int, int, int]:
    """A stable colour per structure, the same in every prediction.

    Hues step by the golden ratio along the vocabulary, so structures that sit together
    in it (liver, spleen, gallbladder) get clearly different colours.
    """
    i = anatomy.index(name)
    hue = (i * 0.618033988749895) % 1.0
    sat, val = (0.65, 0.95) if i % 2 == 0 else (0.9, 0.8)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def write_label_tables(
    prefix: str | Path,
    structures: Sequence[str],
    sources: Mapping[str, Sequence[str]],
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``PREFIX.labels.json``, ``PREFIX.ctbl`` (3D Slicer) and ``PREFIX.itksnap.txt``.

    Args:
        prefix: path without extension, e.g. ``out/case_001`` for ``out/case_001.nii.gz``.
        structures: label ``i + 1`` is ``structures[i]``; 0 is background.
        sources: per structure, the tasks (decoders) that predict it.
        extra: more JSON to record (e.g. the merge rule and the bundle).
    """
    prefix = Path(prefix)
    entries: list[dict[str, Any]] = []
    slicer = ["# 3D Slicer colour table: id name R G B A", "0 background 0 0 0 0"]
    itk = [
        "# ITK-SnAP Label Description File",
        "# IDX  -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        '    0    0    0    0     0   0   0  "Clear Label"',
    ]
    for i, name in enumerate(structures, 1):
        st = anatomy.get(name)
        r, g, b = structure_color(name)
        entries.append(
            {
                "id": i,
                "structure": name,
                "region": str(st.region),
                "group": str(st.group),
                "color": [r, g, b],
                "tasks": list(sources.get(name, ())),
            }
        )
        slicer.append(f"{i} {name} {r} {g} {b} 255")
        itk.append(f'{i:5d} {r:4d} {g:4d} {b:4d}     1   1   1  "{name}"')
    doc = {"background": 0, "labels": entries, **(extra or {})}

    def beside(suffix: str) -> Path:
        return prefix.with_name(prefix.name + suffix)

    return [
        atomic_write_json(beside(".labels.json"), doc),
        atomic_write_bytes(beside(".ctbl"), ("\n".join(slicer) + "\n").encode()),
        atomic_write_bytes(beside(".itksnap.txt"), ("\n".join(itk) + "\n").encode()),
    ]
