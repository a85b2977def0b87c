"""What a site says about itself (``describe``), and the checks every message shares.

Kept free of torch and MONAI on purpose: Flower starts a fresh ClientApp process for
each message in deployment, and the ``describe`` sent to every node that connects then
costs a second of imports instead of ten (``client.app``). The round config and the
record keys of the training messages are in :mod:`core.protocol`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from core import anatomy
from core.records import Record, RecordError, setting

DESCRIBE = "query.describe"  # the message type (Flower's "<category>.<action>")
SITE = "site"  # the record key of the SiteRecord in a describe reply

SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_STRUCTURES = 256


class ProtocolError(RecordError):
    """A message that lacks a field or carries a bad value."""


def check_sha256(value: str, where: str, allow_empty: bool = False) -> str:
    """A weight hash is 64 lower-case hex digits (it becomes part of a file name).

    Raises:
        ProtocolError: for anything else.
    """
    if (allow_empty and value == "") or SHA256.fullmatch(value):
        return value
    raise ProtocolError(f"{where}: expected 64 hex digits, found {value[:80]!r}")


def check_structures(structures: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Distinct vocabulary names, at most :data:`MAX_STRUCTURES`.

    Raises:
        ProtocolError: for an unknown, repeated or excess name.
    """
    if not 1 <= len(structures) <= MAX_STRUCTURES or len(set(structures)) != len(structures):
        raise ProtocolError(f"{where}: expected 1..{MAX_STRUCTURES} distinct structure names")
    for name in structures:
        try:
            canonical = anatomy.get(name).name
        except anatomy.UnknownStructureError as e:
            raise ProtocolError(f"{where}: {e}") from None
        if canonical != name:
            raise ProtocolError(f"{where}: {name!r} is not a canonical vocabulary name")
    return structures


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_DATASETS = 64


def serves(labelled: Iterable[str], wanted: Iterable[str], partial: bool = False) -> bool:
    """Whether a dataset that labels ``labelled`` can train a task of ``wanted`` structures.

    It must label all of them, or with ``partial`` (a task trained with the marginal loss)
    at least one.
    """
    have, need = set(labelled), set(wanted)
    return bool(have & need) if partial else need <= have


@dataclass(frozen=True)
class SiteRecord(Record):
    """What a site says about itself in ``describe`` (record :data:`SITE`)."""

    name: str = setting(lo=1, hi=64)
    encoders: tuple[str, ...] = setting((), hi=64, doc="hashes of the encoders it caches")
    datasets: int = setting(0, lo=0, hi=MAX_DATASETS)

    def __post_init__(self) -> None:
        if not SITE_NAME.fullmatch(self.name):
            raise ValueError(f"site name {self.name!r}: use letters, digits, '_', '.', '-'")
        for sha in self.encoders[:MAX_DATASETS]:
            check_sha256(sha, "encoders")
        if len(self.encoders) > MAX_DATASETS:
            raise ValueError(f"{len(self.encoders)} cached encoders; expected <= {MAX_DATASETS}")


@dataclass(frozen=True)
class DatasetRecord(Record):
    """One dataset a site holds (record ``dataset-<i>``): aggregates only.

    Neither its name nor its folder is sent: the server needs only what it labels and
    how many cases it has, and a folder's name is the site's own business.
    """

    structures: tuple[str, ...] = setting(lo=1, hi=64)
    cases: int = setting(lo=0, hi=1_000_000)

    def __post_init__(self) -> None:
        check_structures(self.structures, "structures")

    @staticmethod
    def key(index: int) -> str:
        """The record key of the ``index``-th dataset."""
        return f"dataset-{index}"
