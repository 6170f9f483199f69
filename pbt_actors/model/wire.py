"""msgpack with limits: the one place where our records become bytes and back.

Layer 1. Both the LMDB store and the ZeroMQ codec call ``pack``/``unpack`` so that a trial
record has the same bytes on disk and on the wire. ``unpack`` is safe on hostile input: it
caps size and nesting, refuses non-string map keys and extension types, and turns every
decoder failure into ``WireError`` (never pickle, never run code).
"""

from __future__ import annotations

from typing import Any

import msgpack

from pbt_actors.model.errors import WireError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32


def pack(obj: Any) -> bytes:
    """Serialise plain data (dicts, lists, str, bytes, numbers, bool, None)."""
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Decode exactly one msgpack object, within ``max_bytes`` and ``max_depth``.

    Raises:
        WireError: too large, truncated, trailing bytes, bad UTF-8, non-string map keys,
            extension types, or nesting deeper than ``max_depth``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack documents no closed set of exceptions
        raise WireError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    _check_depth(obj, max_depth)
    return obj


def _check_depth(obj: Any, max_depth: int) -> None:
    """Iterative depth check (recursion would itself be the attack surface)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise WireError(f"nesting deeper than {max_depth}")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > max_depth:
                raise WireError(f"nesting deeper than {max_depth}")
            stack.extend((v, depth + 1) for v in item)
