"""The schema machinery: msgspec validates and converts every record, message and export.

Layer 1. Records on disk (``pbt_actors.model.records``), protocol bodies off the network
(``pbt_actors.model.protocol``) and exported schedules (``pbt_actors.tools.lineage``) all
come from outside this process: a hostile peer, a damaged disk, a hand-edited JSON file. Each
type is declared once, as a frozen ``msgspec.Struct`` whose annotations carry its constraints
(``Meta``); ``from_plain`` converts plain data into it strictly (an int is not a bool, a
string is not a number) and turns msgspec's complaint into a ``SchemaError`` that names the
field. ``to_plain`` is the reverse, the plain data that ``pbt_actors.model.wire`` packs.

What msgspec cannot state is here too, once: finite hyperparameters, path safety of
checkpoint uris and names, and ``is_int``/``is_number`` for the ad-hoc checks of plain values
outside a schema (report tables, exports, settings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias, TypeGuard, TypeVar

import msgspec

from pbt_actors.model.errors import ConfigError, SchemaError, WireError

S = TypeVar("S")

# --- one rule for numbers ----------------------------------------------------------------------


def is_int(value: object) -> TypeGuard[int]:
    """An integer, not a bool (msgpack and JSON keep them apart, so must we)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- constrained types, declared once ----------------------------------------------------------
StrictBool: TypeAlias = Annotated[bool, msgspec.Meta(description="true or false, not 0/1")]
NonNegativeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt: TypeAlias = Annotated[int, msgspec.Meta(ge=1)]
Sha256: TypeAlias = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
HParamValue: TypeAlias = bool | int | float | str
HParams: TypeAlias = dict[str, HParamValue]
Metrics: TypeAlias = dict[str, float]
"""Metric values may be NaN or infinite: such a trial just loses."""


# --- plain data <-> structs --------------------------------------------------------------------
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


def to_builtins(obj: Any) -> Any:
    """``obj`` as the builtins msgpack packs, in field order: the fast form for the wire and
    the store. Arrays stay tuples where the field is a tuple (msgpack writes both as arrays)."""
    try:
        return msgspec.to_builtins(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def to_plain(obj: Any) -> Any:
    """``obj`` as plain data (dicts, lists, str, numbers, bool, None) in field order.

    Arrays come back as lists, so the plain form equals what a reader unpacks from the bytes
    (the views handed to callers: message bodies, exports, the stored experiment).
    """
    try:
        return _DECODER.decode(_ENCODER.encode(obj))
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def from_plain(data: Any, cls: type[S], what: str) -> S:
    """``data`` validated and converted into ``cls`` (strict: no coercion but int → float).

    Raises:
        SchemaError: naming the field, e.g. ``Expected `int`, got `bool` - at `trial.id```.
    """
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise SchemaError(_located(str(exc), what)) from None


def _located(message: str, what: str) -> str:
    """msgspec's path ``$.a.b`` reads ``what.a.b``; a complaint about the root names ``what``."""
    if "`$" in message:
        return message.replace("`$", f"`{what}", 1)
    return f"{message} - at `{what}`"


def check_fields(settings: Any, what: str) -> None:
    """Check a settings dataclass built in Python (``Experiment(...)``) against its annotations.

    Only annotated fields are checked (``Annotated``, ``Literal``): those state a rule. The
    values are not converted, so a strict check is what an experiment file gets too.

    Raises:
        ConfigError: naming the setting, e.g. ``experiment 'x': population: Expected `int` >= 1``.
    """
    for name, hint in _ruled_fields(type(settings)):  # type: ignore[arg-type]
        value = getattr(settings, name)
        try:
            msgspec.convert(value, hint, strict=True)
        except msgspec.ValidationError as exc:
            where = f"{what} {name}" if what.endswith(":") else f"{what}.{name}"
            raise ConfigError(f"{where} = {value!r:.80}: {exc}") from None


@functools.cache
def _ruled_fields(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if _states_a_rule(hints[f.name]))


def _states_a_rule(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Annotated, Literal):
        return True
    return origin in (typing.Union, types.UnionType) and any(_states_a_rule(arg) for arg in typing.get_args(hint))


def hparams_from(value: Any, what: str) -> dict[str, Any]:
    """Hyperparameters: string keys, finite scalar values (bool, number, string)."""
    hparams = from_plain(value, HParams, what)
    check_finite(hparams, what)
    return hparams


# --- what no schema states ---------------------------------------------------------------------


def check_finite(hparams: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """Hyperparameters must be finite: a NaN learning rate is a bug, not a setting."""
    for key, value in hparams.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(f"{what}[{key!r}] must be finite")
    return hparams


def check_relative_uri(uri: str, what: str) -> str:
    """A checkpoint uri stays inside the checkpoint root: relative, no ``..``, no NUL."""
    if not uri or uri.startswith("/") or ".." in uri.split("/") or "\x00" in uri:
        raise SchemaError(f"{what} {uri!r} must be a relative path inside the checkpoint root")
    return uri


MAX_NAME_LEN = 200
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\\x7f]")


def safe_name(value: Any, what: str = "experiment") -> str:
    """A name used as one path component (the experiment's, under the checkpoint root):
    no ``/``, ``\\``, control characters, ``.``/``..``, at most ``MAX_NAME_LEN`` characters.
    ``""`` is allowed (the worker then uses a default)."""
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME_LEN or _UNSAFE_NAME.search(value) or value in (".", "..") or value.startswith("."):
        raise SchemaError(f"{what} name {value[:64]!r} is not a safe file name "
                          "(no /, \\, control characters, no leading dot)")
    return value
