"""The envelope codec: round trips, every error code, and hostile-input fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt_actors.model import wire
from pbt_actors.model.errors import ProtocolError, SchemaError
from pbt_actors.model.protocol import (
    ERROR_CODES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    Ack,
    Fail,
    Hello,
    message_from_body,
)
from pbt_actors.transport.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Envelope,
    decode,
    encode,
)
from tests.support.samples import sample_messages

pytestmark = pytest.mark.timeout(120)


EXAMPLES: list[Any] = list(sample_messages().values())


def envelope(**overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": "hello", "id": 7, "b": {"worker": "w1"}}
    env.update(overrides)
    return env


def raises_code(data: bytes, code: str, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    assert info.value.code == code, info.value
    assert isinstance(info.value, SchemaError)
    return info.value


# --- round trips -------------------------------------------------------------------------------
def test_examples_cover_every_message_type() -> None:
    assert {type(m).TYPE for m in EXAMPLES} == set(MESSAGE_TYPES) == set(REQUEST_TYPES) | set(REPLY_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).TYPE)
@pytest.mark.parametrize("request_id", [0, 1, 2**32, 2**63 - 1])
def test_round_trip(message: Any, request_id: int) -> None:
    data = encode(message, request_id)
    env = decode(data)
    assert env == Envelope(request_id, message)
    raw = msgpack.unpackb(data, raw=False)
    assert raw == {"v": PROTOCOL_VERSION, "t": type(message).TYPE, "id": request_id, "b": message.to_body()}


def test_accept_restricts_types() -> None:
    assert decode(encode(Hello("w"), 1), accept=REQUEST_TYPES).message == Hello("w")
    err = raises_code(encode(Ack(), 5), "unknown_type", accept=REQUEST_TYPES)
    assert err.request_id == 5
    err = raises_code(encode(Hello("w"), 6), "unknown_type", accept=REPLY_TYPES)
    assert err.request_id == 6


@pytest.mark.parametrize("bad_id", [-1, 2**63, True, 1.0, "1", None])
def test_encode_refuses_bad_request_ids(bad_id: Any) -> None:
    with pytest.raises(ValueError):
        encode(Ack(), bad_id)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode({"t": "ack"}, 1)  # type: ignore[arg-type]


# --- each error code ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x81", wire.pack([1, 2]), wire.pack("hello"), wire.pack(None), wire.pack(3),
    wire.pack(envelope()) + b"\x00",  # trailing bytes
    b"\x82\x01\x02\x03\x04",  # integer map keys
    msgpack.packb(msgpack.ExtType(1, b"x")),
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8
])
def test_malformed_without_id(data: bytes) -> None:
    assert raises_code(data, "malformed").request_id is None


@pytest.mark.parametrize("bad_id", [-1, 2**63, 2**64 - 1, True, 1.5, "7", None, [7]])
def test_malformed_request_id(bad_id: Any) -> None:
    assert raises_code(wire.pack(envelope(id=bad_id)), "malformed").request_id is None


def test_missing_id_is_malformed() -> None:
    env = envelope()
    del env["id"]
    assert raises_code(wire.pack(env), "malformed").request_id is None


@pytest.mark.parametrize("overrides", [
    {"v": "1"}, {"v": None}, {"v": True}, {"v": 1.0},
    {"t": 1}, {"t": None}, {"t": b"hello"},
    {"b": None}, {"b": []}, {"b": "x"},
    {"b": {}},  # hello needs a worker
    {"b": {"worker": ""}},
    {"b": {"worker": "w", "pid": "12"}},
    {"t": "heartbeat", "b": {"worker": "w", "trial_id": 0, "attempt": 1, "step": 1}},
    {"t": "report", "b": {"worker": "w", "trial_id": 1, "attempt": 1, "final": {"x": "high"}}},
    {"t": "report", "b": {"worker": "w", "trial_id": 1, "attempt": 1, "final": {},
                          "checkpoint": {"uri": "../etc/passwd", "bytes": 1, "sha256": "0" * 64, "step": 1}}},
    {"t": "trial", "b": {"trial_id": 1}},
])
def test_malformed_with_id(overrides: dict[str, Any]) -> None:
    assert raises_code(wire.pack(envelope(**overrides)), "malformed").request_id == 7


def test_missing_fields_are_malformed() -> None:
    for field in ("v", "t", "b"):
        env = envelope()
        del env[field]
        assert raises_code(wire.pack(env), "malformed").request_id == 7


@pytest.mark.parametrize("version", [0, 1, PROTOCOL_VERSION + 1, -1, 2**40])
def test_version_carries_request_id(version: int) -> None:
    err = raises_code(wire.pack(envelope(v=version, t="from-the-future", b="whatever")), "version")
    assert err.request_id == 7
    assert str(PROTOCOL_VERSION) in err.text


@pytest.mark.parametrize("tag", ["nope", "", "HELLO", "x" * 10_000])
def test_unknown_type(tag: str) -> None:
    err = raises_code(wire.pack(envelope(t=tag)), "unknown_type")
    assert err.request_id == 7
    assert len(str(err)) < 200


def test_extra_envelope_keys_are_ignored() -> None:
    assert decode(wire.pack(envelope(x={"future": 1}))).message == Hello("w1")


def test_protocol_error_codes_are_known() -> None:
    with pytest.raises(ValueError):
        ProtocolError("no-such-code", "x")
    for code in ERROR_CODES:
        assert ProtocolError(code, "t", 3).code == code


# --- limits ------------------------------------------------------------------------------------
def test_oversized_frame() -> None:
    big = encode(Fail("w", 1, 1, "x" * 60_000), 9)
    assert decode(big).request_id == 9
    raises_code(big, "malformed", max_bytes=len(big) - 1)
    assert decode(big, max_bytes=len(big)).request_id == 9
    huge = wire.pack(envelope(pad="y" * (DEFAULT_MAX_MESSAGE_BYTES + 1)))
    assert raises_code(huge, "malformed").request_id is None


def test_deep_nesting() -> None:
    deep: Any = {"worker": "w1"}
    for _ in range(100):
        deep = {"nested": deep}
    raises_code(wire.pack(envelope(b=deep)), "malformed")
    # raw bytes nesting far beyond msgpack's own stack limit
    raises_code(b"\x91" * 200_000 + b"\xc0", "malformed")
    raises_code(b"\x81\xa1a" * 100_000 + b"\xc0", "malformed")


def test_huge_declared_lengths_allocate_nothing() -> None:
    raises_code(b"\xdd\xff\xff\xff\xff", "malformed")  # array32 of 2**32-1 items
    raises_code(b"\xdf\xff\xff\xff\xff", "malformed")  # map32
    raises_code(b"\xdb\xff\xff\xff\xff", "malformed")  # str32


# --- fuzzing: decode raises ProtocolError and nothing else ------------------------------------------------
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
)
objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
valid_frames = st.builds(encode, st.sampled_from(EXAMPLES), st.integers(0, 2**63 - 1))


def check_decode(data: bytes) -> None:
    try:
        env = decode(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES
        assert exc.request_id is None or 0 <= exc.request_id < 2**63
    else:
        assert type(env.message) in MESSAGE_TYPES.values()
        assert 0 <= env.request_id < 2**63
        # anything accepted re-encodes to a stable frame (bytes compare: NaN != NaN)
        frame = encode(env.message, env.request_id)
        again = decode(frame)
        assert encode(again.message, again.request_id) == frame


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(objects)
def test_fuzz_random_objects(obj: Any) -> None:
    check_decode(msgpack.packb(obj, use_bin_type=True))


@FUZZ
@given(st.sampled_from(EXAMPLES), st.integers(0, 2**63 - 1), st.sampled_from(["v", "t", "id", "b"]), objects)
def test_fuzz_replaced_envelope_field(message: Any, request_id: int, field: str, value: Any) -> None:
    env = {"v": PROTOCOL_VERSION, "t": type(message).TYPE, "id": request_id, "b": message.to_body()}
    env[field] = value
    check_decode(msgpack.packb(env, use_bin_type=True))


@FUZZ
@given(st.sampled_from(EXAMPLES), st.data())
def test_fuzz_mutated_body(message: Any, data: st.DataObject) -> None:
    body = message.to_body()
    if body:
        key = data.draw(st.sampled_from(sorted(body)))
        if data.draw(st.booleans()):
            del body[key]
        else:
            body[key] = data.draw(objects)
    body.update(data.draw(st.dictionaries(st.text(max_size=10), objects, max_size=3)))
    frame = msgpack.packb({"v": PROTOCOL_VERSION, "t": type(message).TYPE, "id": 1, "b": body}, use_bin_type=True)
    check_decode(frame)
    # the schema itself reports bad bodies as SchemaError (the codec's catch-all is only a backstop)
    with contextlib.suppress(SchemaError):
        message_from_body(type(message).TYPE, body)


@FUZZ
@given(valid_frames, st.data())
def test_fuzz_truncated(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    check_decode(frame[:cut])


@FUZZ
@given(valid_frames, st.data())
def test_fuzz_bit_flips(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] ^= 1 << data.draw(st.integers(0, 7))
    check_decode(bytes(mutated))


@FUZZ
@given(valid_frames, st.data())
def test_fuzz_spliced(frame: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(frame)))
    junk = data.draw(st.binary(max_size=16))
    end = data.draw(st.integers(start, len(frame)))
    check_decode(frame[:start] + junk + frame[end:])
