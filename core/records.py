"""Typed, bounded records: frozen dataclasses that parse plan tables and message records.

A settings or reply class is a frozen dataclass whose fields are declared with
:func:`setting` (a default and bounds). The same declaration then gives the plan's TOML
keys, the Flower record a message carries, the checks on what arrives, and the defaults:
adding a setting is one line. Parsing refuses unknown keys (naming the nearest known one),
wrong types, non-finite numbers and values outside the bounds, with the field named.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Self, TypeVar

T = TypeVar("T")
Scalar = int | float | bool | str


class RecordError(ValueError):
    """A record or table with a missing, unknown, mistyped or out-of-range field."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    key: str | None = None,
    fallback: str | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with bounds.

    Args:
        default: the value when the key is absent (none: the key is required).
        lo: smallest allowed value (numbers, each element of a tuple, string length).
        hi: largest allowed value (likewise).
        key: the name in plan tables when it differs from the field's name.
        fallback: another key whose value is the default when this key is absent.
        doc: what the setting means (shown in errors and docs).
    """
    meta = {"lo": lo, "hi": hi, "key": key, "fallback": fallback, "doc": doc}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record class: its names, type, default and bounds."""

    name: str
    key: str
    kind: Any
    default: Any
    lo: float | None
    hi: float | None
    fallback: str | None
    doc: str = ""

    @property
    def wire(self) -> str:
        """The key in a Flower record (kebab-case)."""
        return self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        """No default: the key must be given."""
        return self.default is dataclasses.MISSING


def fields_of(cls: type) -> tuple[FieldSpec, ...]:
    """The declared fields of a record class, in order."""
    return _fields(cls)


@cache
def _fields(cls: Any) -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        FieldSpec(
            f.name,
            f.metadata.get("key") or f.name,
            hints[f.name],
            f.default,
            f.metadata.get("lo"),
            f.metadata.get("hi"),
            f.metadata.get("fallback"),
            f.metadata.get("doc", ""),
        )
        for f in dataclasses.fields(cls)
        if f.init and f.metadata.get("record", True)
    )


def keys_of(cls: type) -> tuple[str, ...]:
    """The plan-table keys of a record class."""
    return tuple(f.key for f in fields_of(cls))


def _bounded(value: float, spec: FieldSpec, where: str) -> None:
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise RecordError(f"{where}: {value!r} is outside [{spec.lo}, {spec.hi}]")


def _scalar(value: Any, kind: Any, spec: FieldSpec, where: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where}: expected true or false, found {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected a whole number, found {value!r}")
        _bounded(value, spec, where)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{where}: expected a number, found {value!r}")
        if not math.isfinite(value):
            raise RecordError(f"{where}: expected a finite number, found {value!r}")
        _bounded(float(value), spec, where)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a string, found {value!r}")
        _bounded(len(value), spec, f"{where} (length)")
        return value
    raise TypeError(f"{where}: unsupported field type {kind!r}")


MAX_JSON_CHARS = 65536


def _structured(value: Any, kind: Any, where: str) -> Any:
    """A value object with ``from_json``/``to_json`` (a genotype, an encoder config)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        if len(value) > MAX_JSON_CHARS:
            raise RecordError(f"{where}: {len(value)} characters; expected <= {MAX_JSON_CHARS}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not JSON ({e})") from None
    try:
        return kind.from_json(value)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RecordError(f"{where}: {e}") from None


def convert(value: Any, spec: FieldSpec, where: str) -> Any:
    """Check one value against its field's type and bounds; returns the typed value.

    Raises:
        RecordError: naming ``where`` and what was expected.
    """
    kind = spec.kind
    if hasattr(kind, "from_json"):
        return _structured(value, kind, where)
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return convert(value, dataclasses.replace(spec, kind=options[0]), where)
    if origin is tuple:
        (element, *rest) = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where}: expected a list, found {value!r}")
        if rest and rest != [Ellipsis] and len(value) != len(typing.get_args(kind)):
            raise RecordError(f"{where}: expected {len(typing.get_args(kind))} values")
        if len(value) > 4096:
            raise RecordError(f"{where}: {len(value)} values; expected at most 4096")
        return tuple(_scalar(v, element, spec, f"{where}[{i}]") for i, v in enumerate(value))
    return _scalar(value, kind, spec, where)


def check_unknown(values: Mapping[str, Any], known: set[str], where: str) -> None:
    """Refuse keys that no field declares, naming the nearest known key.

    Raises:
        RecordError: for the first unknown key.
    """
    for key in values:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {sorted(known)}"
            raise RecordError(f"{where}: unknown key {key!r}{hint}")


def parse(cls: type[T], values: Mapping[str, Any], where: str, wire: bool = False) -> T:
    """Build a record class from a plan table (``wire=False``) or a message record.

    Keys of ``values`` that the class does not declare are ignored here (callers that
    own the whole table check them with :func:`check_unknown`).

    Raises:
        RecordError: for a missing required key or a bad value, naming the field.
    """
    out: dict[str, Any] = {}
    for spec in fields_of(cls):
        key = spec.wire if wire else spec.key
        if key in values:
            out[spec.name] = convert(values[key], spec, f"{where}.{key}")
        elif not wire and spec.fallback and spec.fallback in values:
            out[spec.name] = convert(values[spec.fallback], spec, f"{where}.{spec.fallback}")
        elif spec.required:
            raise RecordError(f"{where}: missing {key!r}")
    try:
        return cls(**out)
    except ValueError as e:  # a class's own cross-field check (__post_init__)
        raise RecordError(f"{where}: {e}") from None


class Record:
    """Mixin for record dataclasses: plain JSON form, so a record can nest in another."""

    def to_json(self) -> dict[str, Any]:
        """The fields by plan key."""
        return flat(self)

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        """Parse and check a mapping made by :meth:`to_json`.

        Raises:
            RecordError: naming the field that is wrong.
        """
        if not isinstance(obj, Mapping):
            raise RecordError(f"{cls.__name__}: expected a mapping, found {type(obj).__name__}")
        check_unknown(obj, set(keys_of(cls)), cls.__name__)
        return parse(cls, obj, cls.__name__)


def flat(record: Any, wire: bool = False) -> dict[str, Any]:
    """A record's fields as a flat dict (plan keys, or kebab-case message keys).

    ``None`` values are left out (an absent optional key parses back to ``None``).
    """
    out: dict[str, Any] = {}
    for spec in fields_of(type(record)):
        value = getattr(record, spec.name)
        if value is None:
            continue
        if hasattr(value, "to_json"):
            value = json.dumps(value.to_json()) if wire else value.to_json()
        out[spec.wire if wire else spec.key] = list(value) if isinstance(value, tuple) else value
    return out
