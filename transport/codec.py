"""The protocol envelope: messages to bytes and back (docs/design.md §5, ``docs/protocol.md``).

Layer 2, pure: no sockets, no clock, no logging. One ZeroMQ payload frame holds one msgpack
map, the *envelope*::

    {"v": PROTOCOL_VERSION, "t": message.TYPE, "id": request_id, "b": message.to_body()}

(the body packed from ``message.to_wire()``: the same bytes, without the list copies).

Replies echo the request's ``id``. ``pbt_actors.model.wire`` is the only msgpack entry point (size
and depth limits, no extension types, never pickle).

``decode`` is safe on hostile input: whatever the bytes, it returns an ``Envelope`` or raises
``ProtocolError`` (``pbt_actors.model.errors``) whose ``code`` is one of ``ERROR_CODES``:

* ``malformed`` — undecodable msgpack, too large or too deep, not a map, a missing or
  wrongly typed envelope field, or a body that fails its message schema;
* ``version`` — ``v`` is an integer other than ``PROTOCOL_VERSION``;
* ``unknown_type`` — ``t`` is a string that names no message type (or, with ``accept``, no
  type the receiver accepts).

Whenever the request id could be read it is carried in ``ProtocolError.request_id`` so that
the receiver can answer ``error`` under that id; otherwise it is ``None`` (drop the frame).
Unknown extra envelope keys are ignored (room for additive extensions within a version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pbt_actors.model import wire
from pbt_actors.model.errors import ProtocolError, SchemaError, WireError
from pbt_actors.model.fields import is_int
from pbt_actors.model.protocol import MESSAGE_TYPES, PROTOCOL_VERSION, Message, message_from_body

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_REQUEST_ID = 2**63  # exclusive: ids are in [0, 2**63)
MAX_DEPTH = 16  # envelope(1) + body(2) + checkpoint / metrics / measurements(3..4): ample


@dataclass(frozen=True)
class Envelope:
    """A decoded, validated frame: the request id and the typed message."""

    request_id: int
    message: Message


def _valid_request_id(value: Any) -> bool:
    return is_int(value) and 0 <= value < MAX_REQUEST_ID


def encode(message: Message, request_id: int) -> bytes:
    """The envelope bytes of ``message`` under ``request_id``.

    Raises:
        ValueError: ``request_id`` is not an int in ``[0, 2**63)``.
        TypeError: ``message`` is not one of the protocol's message types.
        WireError: the body holds something msgpack cannot encode.
    """
    if not _valid_request_id(request_id):
        raise ValueError(f"request id must be an int in [0, 2**63), got {request_id!r}")
    tag = getattr(type(message), "TYPE", None)
    if not isinstance(tag, str) or MESSAGE_TYPES.get(tag) is not type(message):
        raise TypeError(f"{type(message).__name__} is not a protocol message type")
    return wire.pack({"v": PROTOCOL_VERSION, "t": tag, "id": request_id, "b": message.to_wire()})


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           accept: Mapping[str, type[Any]] | None = None) -> Envelope:
    """Validate one payload frame.

    Args:
        data: the frame's bytes.
        max_bytes: frames longer than this are ``malformed`` (ZeroMQ's ``MAXMSGSIZE`` does not
            apply to ``inproc://``, so the codec checks again).
        accept: if given, only these type tags (e.g. ``messages.REQUEST_TYPES`` on the
            controller) are accepted; any other tag is ``unknown_type``.

    Raises:
        ProtocolError: and nothing else, whatever ``data`` holds.
    """
    try:
        raw = wire.unpack(data, max_bytes=max_bytes, max_depth=MAX_DEPTH)
    except WireError as exc:
        raise ProtocolError("malformed", str(exc)) from None
    except Exception as exc:  # pragma: no cover - wire.unpack promises WireError only
        raise ProtocolError("malformed", f"undecodable: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("malformed", f"envelope must be a map, got {type(raw).__name__}")

    if "id" not in raw:
        raise ProtocolError("malformed", "envelope has no 'id'")
    if not _valid_request_id(raw["id"]):
        raise ProtocolError("malformed", "envelope 'id' must be an integer in [0, 2**63)")
    request_id: int = raw["id"]

    version = raw.get("v")
    if not is_int(version):
        raise ProtocolError("malformed", "envelope 'v' must be an integer", request_id)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {version} is not supported "
                                       f"(this side speaks {PROTOCOL_VERSION})", request_id)

    tag = raw.get("t")
    if not isinstance(tag, str):
        raise ProtocolError("malformed", "envelope 't' must be a string", request_id)
    allowed = MESSAGE_TYPES if accept is None else accept
    if tag not in allowed or tag not in MESSAGE_TYPES:
        shown = tag if len(tag) <= 64 else tag[:64] + "..."
        raise ProtocolError("unknown_type", f"message type {shown!r} is not accepted here", request_id)

    if "b" not in raw:
        raise ProtocolError("malformed", "envelope has no 'b'", request_id)
    try:
        message = message_from_body(tag, raw["b"])
    except SchemaError as exc:
        raise ProtocolError("malformed", f"{tag}: {exc}", request_id) from None
    except Exception as exc:  # defence in depth: a schema bug must not kill the receiver
        raise ProtocolError("malformed", f"{tag}: invalid body ({type(exc).__name__})", request_id) from None
    return Envelope(request_id, message)
