"""One rule for turning config dataclasses into plain dicts (JSON) and back.

* ``to_dict``: :func:`dataclasses.asdict` with tuples written as lists, so the
  result is what ``json.dumps`` writes and ``json.loads`` reads back.
* ``from_dict``: the inverse, by the field types: nested config dataclasses
  (also ``X | None``) are rebuilt, lists become tuples where the field is a
  tuple. **Unknown keys are an error** (:class:`avcore.errors.UsageError`) naming them; missing keys take their
  defaults. A config read from a file is therefore either understood whole or
  refused, never half-read.

Config classes inherit :class:`ConfigDict` to get ``to_dict()`` and
``from_dict()``; ``__post_init__`` is where a config validates its values, so
a bad value fails where it is set (command line, JSON file or code alike).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from .errors import UsageError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config dataclass as a JSON-friendly dict (tuples as lists, nested configs as dicts)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in ``tp`` (``X``, ``X | None``, ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def _is_tuple(tp: Any) -> bool:
    if tp is tuple or typing.get_origin(tp) is tuple:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(tp))
    return False


def from_dict(cls: type[T], d: dict) -> T:
    """Rebuild config dataclass ``cls`` from :func:`to_dict` output; unknown keys are a UsageError."""
    if not isinstance(d, dict):
        raise UsageError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UsageError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for name, value in d.items():
        tp = hints.get(name)
        sub = _dataclass_in(tp)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list) and _is_tuple(tp):
            value = tuple(tuple(x) if isinstance(x, list) else x for x in value)
        kw[name] = value
    return cls(**kw)


class ConfigDict:
    """Mixin for config dataclasses: ``to_dict()`` and ``from_dict()`` by the one rule of this module."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict) -> T:
        return from_dict(cls, d)


# --------------------------------------------------------------------------- value checks used in __post_init__


def require_positive(owner: str, **values: float) -> None:
    """Each value must be a finite number > 0 (a :class:`UsageError` naming it otherwise)."""
    for name, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UsageError(f"{owner}: {name} must be a positive finite number, got {v!r}")


def require_non_negative(owner: str, **values: float) -> None:
    """Each value must be a finite number >= 0."""
    for name, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UsageError(f"{owner}: {name} must be a finite number >= 0, got {v!r}")
