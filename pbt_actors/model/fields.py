"""Strict field readers: the teeth of every schema that reads untrusted plain data.

Layer 1. Records on disk (``pbt_actors.model.records``), protocol bodies off the network
(``pbt_actors.model.protocol``) and exported schedules (``pbt_actors.tools.lineage``) all
come from outside this process: a hostile peer, a damaged disk, a hand-edited JSON file. Each
reader below accepts exactly one shape and otherwise raises ``SchemaError`` naming the field
(``what``), so a bad input is refused with a precise reason instead of surfacing later as an
``AttributeError`` deep inside the controller.

They are one module, used by all of those schemas, so that "what counts as an integer" (not a
bool, never a float) is decided once: a reader that was lenient in one place and strict in
another would let a record pass the wire and then fail to load from the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from pbt_actors.model.errors import SchemaError

E = TypeVar("E", bound=Enum)


def mapping_from(value: Any, what: str) -> Mapping[str, Any]:
    """A map (msgpack map / JSON object)."""
    if not isinstance(value, Mapping):
        raise SchemaError(f"{what} must be a map, got {type(value).__name__}")
    return value


def int_from(value: Any, what: str) -> int:
    """An integer; ``bool`` is refused (msgpack and JSON keep them apart, so must we)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SchemaError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def opt_int_from(value: Any, what: str) -> int | None:
    return None if value is None else int_from(value, what)


def float_from(value: Any, what: str) -> float:
    """A number (an integer is widened to float); ``bool`` is refused."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SchemaError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def opt_float_from(value: Any, what: str) -> float | None:
    return None if value is None else float_from(value, what)


def str_from(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string, got {type(value).__name__}")
    return value


def opt_str_from(value: Any, what: str) -> str | None:
    return None if value is None else str_from(value, what)


def bool_from(value: Any, what: str) -> bool:
    """A real boolean: ``0``/``1`` or ``"true"`` are refused."""
    if not isinstance(value, bool):
        raise SchemaError(f"{what} must be a boolean")
    return value


def enum_from(enum: type[E], value: Any, what: str) -> E:
    """A member of ``enum`` by value."""
    try:
        return enum(value)
    except ValueError:
        raise SchemaError(f"{what}: unknown value {value!r}") from None


def metrics_from(value: Any, what: str) -> dict[str, float]:
    """Validate a metrics map: string keys, numeric values (NaN/inf allowed: they just lose)."""
    d = mapping_from(value, what)
    out: dict[str, float] = {}
    for key, raw in d.items():
        if not isinstance(key, str):
            raise SchemaError(f"{what}: metric names must be strings")
        out[key] = float_from(raw, f"{what}[{key!r}]")
    return out


def hparams_from(value: Any, what: str) -> dict[str, Any]:
    """Validate hyperparameters: string keys, scalar values (bool, number, string)."""
    d = mapping_from(value, what)
    for key, raw in d.items():
        if not isinstance(key, str):
            raise SchemaError(f"{what}: names must be strings")
        if not isinstance(raw, bool | int | float | str):
            raise SchemaError(f"{what}[{key!r}] must be a bool, number or string")
        if isinstance(raw, float) and not math.isfinite(raw):
            raise SchemaError(f"{what}[{key!r}] must be finite")
    return dict(d)
