"""What every dataset layout yields: a label table on the vocabulary, cases, checked loading."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from core import anatomy
from core.data.nifti import Volume, read_image, read_volume, same_grid
from core.data.problems import DataError, Problem

MAX_LABEL_ID = 2**31 - 1  # int32, what NIfTI label maps and nnU-Net hold
_DENSE_LOOKUP_IDS = 2**16  # up to this id, mapping label maps goes through a lookup table


def label_dtype(largest: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype that holds ``0..largest`` exactly."""
    if largest < 2**8:
        return np.uint8
    return np.uint16 if largest < 2**16 else np.uint32


class Layout(StrEnum):
    """The on-disk dataset layouts we read."""

    NNUNET_V2 = "nnunet_v2"
    MSD = "msd"
    TOTALSEGMENTATOR = "totalsegmentator"


@dataclass(frozen=True)
class Label:
    """One entry of a task's label table."""

    id: int
    structure: str
    source_name: str


@dataclass(frozen=True)
class LabelTable:
    """A task's foreground labels: its own ids mapped onto vocabulary structures."""

    labels: tuple[Label, ...]

    @classmethod
    def from_names(
        cls, names_by_id: Mapping[int, str], *, context: str, source: Path
    ) -> LabelTable:
        """Build a table from a dataset's id -> name pairs (background excluded).

        Args:
            names_by_id: foreground label ids and names as the dataset spells them.
            context: the dataset's name, for generic lesion names such as ``"cancer"``.
            source: the file the names came from, for error messages.

        Raises:
            DataError: for a bad id, an unknown name (with the closest vocabulary names),
                two labels on one structure, or no foreground label at all.
        """
        if not names_by_id:
            raise DataError(source, "labels: no foreground label (expected at least one)")
        bad_ids = [
            i
            for i in names_by_id
            if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= MAX_LABEL_ID
        ]
        if bad_ids:
            raise DataError(source, f"labels: ids {bad_ids[:5]} are not integers 1..{MAX_LABEL_ID}")
        ids = sorted(names_by_id)
        try:
            structures = anatomy.resolve_table([names_by_id[i] for i in ids], context)
        except anatomy.LabelTableError as e:
            raise DataError(source, f"labels: {e}") from None
        seen: dict[str, int] = {}
        for i, structure in zip(ids, structures, strict=True):
            if structure in seen:
                raise DataError(
                    source, f"labels: ids {seen[structure]} and {i} both map to {structure!r}"
                )
            seen[structure] = i
        labels = (Label(i, s, names_by_id[i]) for i, s in zip(ids, structures, strict=True))
        return cls(tuple(labels))

    @property
    def ids(self) -> tuple[int, ...]:
        """Foreground ids, ascending."""
        return tuple(label.id for label in self.labels)

    @property
    def structures(self) -> tuple[str, ...]:
        """Canonical structure names, in id order."""
        return tuple(label.structure for label in self.labels)

    def id_of(self, structure: str) -> int:
        """The id that labels a structure."""
        for label in self.labels:
            if label.structure == structure:
                return label.id
        raise KeyError(f"{structure!r} is not in this label table ({', '.join(self.structures)})")

    def dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned dtype that holds every id exactly (ids never wrap)."""
        return label_dtype(max(self.ids))

    def to_indices(
        self, label_map: NDArray[np.integer], classes: Sequence[str] | None = None
    ) -> NDArray[np.unsignedinteger]:
        """Map label ids onto class indices: ``classes[i]`` becomes ``i + 1``.

        Args:
            label_map: a label map in this table's ids.
            classes: the structures a decoder predicts, in its channel order (default:
                this table's structures); structures not among them and ids not in this
                table become 0.

        Raises:
            KeyError: if a class is not in this table.
        """
        classes = self.structures if classes is None else classes
        ids = np.asarray(self.ids, dtype=np.int64)
        index_of = np.zeros(len(ids), dtype=label_dtype(len(classes)))
        for i, structure in enumerate(classes, 1):
            index_of[self.ids.index(self.id_of(structure))] = i
        if ids[-1] < _DENSE_LOOKUP_IDS:
            lookup = np.zeros(int(ids[-1]) + 1, dtype=index_of.dtype)
            lookup[ids] = index_of
            dense: NDArray[np.unsignedinteger] = lookup[label_map]
            return dense
        # Large ids: a lookup table that long would be gigabytes; search the sorted ids.
        at = np.minimum(np.searchsorted(ids, label_map), len(ids) - 1)
        found = ids[at] == label_map
        sparse: NDArray[np.unsignedinteger] = np.where(found, index_of[at], 0).astype(
            index_of.dtype
        )
        return sparse

    def to_nnunet(self) -> dict[str, int]:
        """nnU-Net v2's ``labels`` entry: name -> id, background first."""
        return {"background": 0} | {label.structure: label.id for label in self.labels}


@dataclass(frozen=True)
class Case:
    """One training case: a CT image and either a label map or one binary mask per label."""

    case_id: str
    image: Path
    label: Path | None = None
    masks: tuple[tuple[int, Path], ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the case reads."""
        return (self.image, *((self.label,) if self.label else ()), *(p for _, p in self.masks))


@dataclass(frozen=True)
class TaskDataset:
    """One task's dataset as read from disk; ``problems`` lists cases left out while reading."""

    name: str
    layout: Layout
    root: Path
    labels: LabelTable
    cases: tuple[Case, ...]
    problems: tuple[Problem, ...] = field(default=())


@dataclass(frozen=True)
class LoadedCase:
    """A case in memory: the image volume and its label map in the task's ids."""

    case_id: str
    image: Volume
    label: NDArray[np.unsignedinteger] | None


def combine_masks(
    masks: Sequence[tuple[int, NDArray[np.generic]]], dtype: type[np.unsignedinteger]
) -> NDArray[np.unsignedinteger]:
    """Merge binary masks into one label map: where masks overlap, the smaller one wins.

    The smaller mask (fewer voxels in this case) is painted last, so a lesion inside its
    organ and a small structure touching a large one are never erased; on equal sizes the
    higher label id wins. The rule is deterministic and independent of file order.
    """
    shape = masks[0][1].shape
    out = np.zeros(shape, dtype=dtype)
    sizes = [(int(np.count_nonzero(m)), label_id, m) for label_id, m in masks]
    for _, label_id, mask in sorted(sizes, key=lambda t: (-t[0], t[1])):
        out[mask != 0] = label_id
    return out


def _label_map_problem(vol: Volume, table: LabelTable) -> str:
    """Why a label map does not fit its table ("" if it does)."""
    arr = vol.array
    if arr.dtype.kind not in "iuf":
        return f"label map has non-numeric dtype {arr.dtype}"
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        return "label map holds non-integer values"
    # Python numbers compare exactly (1.0 == 1); a cast to int64 could wrap huge values.
    unknown = sorted(set(np.unique(arr).tolist()) - {0, *table.ids})
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        return (
            f"label values {{{shown}}} are not in the label table (expected 0 or one of "
            f"{', '.join(map(str, table.ids))})"
        )
    return ""


def inspect_case(case: Case, table: LabelTable) -> tuple[LoadedCase | None, list[Problem]]:
    """Load a case and collect every problem with it, rather than stopping at the first.

    Returns:
        The loaded case (``None`` if any problem is an error) and the problems found.
    """
    problems: list[Problem] = []

    def read(path: Path, reader: Callable[[Path], Volume] = read_volume) -> Volume | None:
        try:
            return reader(path)
        except DataError as e:
            problems.append(e.problem())
            return None

    image = read(case.image, read_image)
    sources = [(None, case.label)] if case.label else [(i, p) for i, p in case.masks]
    label_vols = [(label_id, read(path)) for label_id, path in sources]
    label_map: NDArray[np.unsignedinteger] | None = None
    for _, vol in label_vols:
        if image is not None and vol is not None and (why := same_grid(image.header, vol.header)):
            problems.append(Problem(vol.path, f"label does not match its image: {why}"))
    if case.label and (vol := label_vols[0][1]) is not None:
        if why := _label_map_problem(vol, table):
            problems.append(Problem(vol.path, why))
        else:  # every value is 0 or an id of the table, so the cast is exact
            label_map = vol.array.astype(table.dtype())
    elif case.masks and all(v is not None for _, v in label_vols):
        arrays: list[tuple[int, NDArray[np.generic]]] = []
        for label_id, vol in label_vols:
            assert vol is not None and label_id is not None
            if not np.isin(vol.array, (0, 1)).all():
                problems.append(Problem(vol.path, "mask is not binary (expected only 0 and 1)"))
            arrays.append((label_id, vol.array))
        if not problems:
            label_map = combine_masks(arrays, table.dtype())
    if problems or image is None:
        return None, problems
    return LoadedCase(case.case_id, image, label_map), problems


def load_case(case: Case, table: LabelTable) -> LoadedCase:
    """Load a case for training, checked like ``csfl site check`` checks it.

    Raises:
        DataError: for the first problem found (the file is named).
    """
    loaded, problems = inspect_case(case, table)
    if loaded is None:
        first = problems[0] if problems else Problem(case.image, "could not be loaded")
        raise DataError(first.path, first.message)
    return loaded


def validation_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` cases :func:`split_cases` holds out for validation."""
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return int(n_val)


def split_cases(
    cases: Sequence[Case], val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[Case, ...], tuple[Case, ...]]:
    """Split cases into train and validation, deterministically from case ids and a seed.

    Cases are ranked by a hash of seed and case id (not by file order), so every site and
    every run splits the same cases the same way. With two or more cases and a positive
    fraction, both sides are non-empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def rank(case: Case) -> str:
        return hashlib.sha256(f"{seed}:{case.case_id}".encode()).hexdigest()

    ordered = sorted(cases, key=rank)
    n_val = validation_count(len(ordered), val_fraction)
    val_ids = {c.case_id for c in ordered[:n_val]}
    train = tuple(c for c in cases if c.case_id not in val_ids)
    return train, tuple(c for c in cases if c.case_id in val_ids)
