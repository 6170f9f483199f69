"""The protocol's message types (docs/design.md §5), declared once as frozen msgspec Structs.

Layer 2: imports only the data model. ``docs/protocol.md`` describes the same types and
``PROTOCOL_VERSION``; a test checks that the two agree.

Each message has a wire ``TYPE`` tag; its fields, with their constraints, are its body's
schema. ``to_body()`` is the plain body in field order and ``from_body()`` validates a body
received from the network (``SchemaError`` naming the field). The codec
(``transport/codec.py``) wraps bodies in the envelope
``{"v": PROTOCOL_VERSION, "t": TYPE, "id": request id, "b": body}``: the tag lives in the
envelope, beside the body, so it is a class attribute here rather than a msgspec tag field
(which would add a key to every body on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

import msgspec

# ERROR_CODES is re-exported: this module lists the whole protocol (types, version, error codes);
# it is defined below the transport because ProtocolError checks its code against it.
from pbt_actors.model.errors import ERROR_CODES, SchemaError  # noqa: F401
from pbt_actors.model.fields import (  # noqa: F401  (safe_name, MAX_NAME_LEN: part of the protocol)
    MAX_NAME_LEN,
    HParams,
    Metrics,
    PositiveInt,
    check_finite,
    from_plain,
    safe_name,
    to_builtins,
    to_plain,
)
from pbt_actors.model.records import CheckpointRef, Measurement, TrialWork

PROTOCOL_VERSION = 2
MAX_WORKER_ID_LEN = 256
MAX_ERROR_TEXT = 64 * 1024
MAX_MEASUREMENTS = 100_000
MAX_RUN_ID_LEN = 64
MAX_HOST_WORKERS = 4096
MAX_PATH_LEN = 4096
MAX_RETRY_AFTER_S = 3600.0
MAX_HEARTBEAT_S = 7 * 24 * 3600.0

WorkerId: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WORKER_ID_LEN)]
RunId: TypeAlias = Annotated[str, msgspec.Meta(max_length=MAX_RUN_ID_LEN)]
"""The run id the sender expects; ``""`` when not known yet."""
RetryAfter: TypeAlias = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_RETRY_AFTER_S)]
"""Seconds to wait before asking again: finite and bounded (NaN fails ``ge``), so a rogue
controller's ``wait`` cannot make a worker ask in a busy loop or sleep forever."""
HeartbeatInterval: TypeAlias = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_HEARTBEAT_S)]


class ProtocolMessage(msgspec.Struct, frozen=True):
    """A message: its fields are its body's schema, in the order they are sent."""

    TYPE: ClassVar[str]
    CLIPPED: ClassVar[Mapping[str, int]] = {}
    """Free-text fields cut to this many characters instead of refused (a long traceback)."""
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    """Fields added after the type was first sent: left out of the body while empty, so a
    message that does not use them has the bytes it always had (an old peer ignores them)."""

    def to_body(self) -> dict[str, Any]:
        """The body as the receiver unpacks it (the codec packs ``to_wire()``: same bytes)."""
        body: dict[str, Any] = to_plain(self)
        return self._without_empty(body)

    def to_wire(self) -> dict[str, Any]:
        """The body as builtins for the codec to pack (``to_builtins``, less empty ``OPTIONAL``)."""
        body: dict[str, Any] = to_builtins(self)
        return self._without_empty(body)

    def _without_empty(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in self.OPTIONAL:
            if not body.get(name):
                body.pop(name, None)
        return body

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Validate a received body. Raises: ``SchemaError`` naming the field."""
        message = from_plain(body, cls, "body")
        message.check()
        if not cls.CLIPPED:
            return message
        long = {name: getattr(message, name)[:limit] for name, limit in cls.CLIPPED.items()
                if len(getattr(message, name)) > limit}
        return msgspec.structs.replace(message, **long) if long else message

    def check(self) -> None:
        """The rules no annotation states (overridden where there are some)."""

    def _check_ref(self, name: str) -> None:
        ref = getattr(self, name)
        if ref is not None:
            ref.check(f"body.{name}")


# --- worker → controller -------------------------------------------------------------------------
class Hello(ProtocolMessage, frozen=True):
    """A worker introduces itself (and learns the protocol is compatible from the ``ack``)."""

    TYPE: ClassVar[str] = "hello"
    CLIPPED: ClassVar[Mapping[str, int]] = {"host": MAX_WORKER_ID_LEN, "device": MAX_WORKER_ID_LEN}
    worker: WorkerId
    host: str = ""
    pid: int = 0
    device: str = ""
    run: RunId = ""
    """The run id the sender expects; ``""`` on first contact (it learns it from the ``ack``)."""
    workers: Annotated[tuple[WorkerId, ...], msgspec.Meta(max_length=MAX_HOST_WORKERS)] = ()
    """Only from a host supervisor: the worker ids of its host, which it alone may say are lost."""
    experiment_file: Annotated[str, msgspec.Meta(max_length=MAX_PATH_LEN)] = ""
    """Optional, from a host supervisor: the experiment file its workers run (for the refusal's text)."""
    experiment_sha256: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{64})?$")] = ""
    """Optional: that file's sha256; a controller started from another file refuses the host."""
    OPTIONAL: ClassVar[tuple[str, ...]] = ("experiment_file", "experiment_sha256")


class RequestTrial(ProtocolMessage, frozen=True):
    """An idle worker asks for work; answered by ``trial``, ``wait`` or ``done``."""

    TYPE: ClassVar[str] = "request_trial"
    worker: WorkerId
    run: RunId = ""


class Heartbeat(ProtocolMessage, frozen=True):
    """Renews a lease; may carry an intermediate measurement. Answered ``ack`` or ``stop``."""

    TYPE: ClassVar[str] = "heartbeat"
    worker: WorkerId
    trial_id: PositiveInt
    attempt: PositiveInt
    step: int
    metrics: Metrics | None = None
    run: RunId = ""


class Report(ProtocolMessage, frozen=True):
    """A finished trial: its measurements, final metrics and checkpoint. Idempotent by
    ``(trial_id, attempt)``; the worker resends it until it gets ``ack`` (or ``stop``).

    ``next``: the worker also asks for its next trial, so the reply is what ``request_trial``
    would get (``trial``, ``wait`` or ``done``; each implies the report was applied) instead of
    ``ack``/``stop``. One round trip per trial instead of two. An ``error`` reply means the
    report was refused and nothing was leased."""

    TYPE: ClassVar[str] = "report"
    worker: WorkerId
    trial_id: PositiveInt
    attempt: PositiveInt
    final: Metrics
    measurements: Annotated[tuple[Measurement, ...], msgspec.Meta(max_length=MAX_MEASUREMENTS)] = ()
    checkpoint: CheckpointRef | None = None
    next: bool = False
    run: RunId = ""
    pending: bool = False
    """Optional: ``train`` returned but the checkpoint is still being written (no ``checkpoint``
    yet). The trial stays RUNNING, leased to this worker while it trains its next one, and
    completes only with the second report, which carries the durable checkpoint."""
    OPTIONAL: ClassVar[tuple[str, ...]] = ("pending",)

    def check(self) -> None:
        self._check_ref("checkpoint")
        if self.pending and self.checkpoint is not None:
            raise SchemaError("body.pending: a pending report carries no checkpoint (it is not durable yet)")


class Fail(ProtocolMessage, frozen=True, omit_defaults=True):
    """A trial's attempt failed. ``retryable`` False means "this spec can never work" (e.g.
    the parent checkpoint is corrupt). ``resume`` is a checkpoint saved before a graceful
    preemption: the retry continues from it instead of from the parent. Fields at their
    default are left out of the body (so ``fault``, added later, leaves the bytes of every
    earlier ``fail`` as they were; the receiver fills the defaults in)."""

    TYPE: ClassVar[str] = "fail"
    CLIPPED: ClassVar[Mapping[str, int]] = {"error": MAX_ERROR_TEXT}
    worker: WorkerId
    trial_id: PositiveInt
    attempt: PositiveInt
    error: str
    retryable: bool = True
    resume: CheckpointRef | None = None
    preempted: bool = False
    """The worker was told to go (SIGTERM): a loss, not a failure of the trial."""
    run: RunId = ""
    fault: Literal["", "checkpoint_store"] = ""
    """``checkpoint_store``: the checkpoint store could not be written (disk full, bucket gone):
    an infrastructure fault, not the trial's. The trial is re-queued uncharged and the
    controller stops serving (``CheckpointStoreFault``) until the store is fixed."""

    def check(self) -> None:
        self._check_ref("resume")


class WorkerLost(ProtocolMessage, frozen=True):
    """From a supervisor: that worker process died; re-queue its trial now, not at expiry."""

    TYPE: ClassVar[str] = "worker_lost"
    CLIPPED: ClassVar[Mapping[str, int]] = {"reason": MAX_ERROR_TEXT}
    worker: WorkerId
    reason: str = ""
    run: RunId = ""


# --- controller → worker --------------------------------------------------------------------------
class _Assigned(ProtocolMessage, TrialWork, frozen=True):
    """Which trial and attempt (positional, so they come first on the wire: see ``TrialWork``)."""

    trial_id: PositiveInt
    attempt: PositiveInt


class TrialAssignment(_Assigned, frozen=True, kw_only=True):
    """``trial``: run this. Carries everything a black-box worker needs: the trial's work
    (``TrialWork``: generation, hparams, steps) and the parent's checkpoint reference (verified by
    sha256 before loading)."""

    TYPE: ClassVar[str] = "trial"
    parent_id: PositiveInt | None
    parent_checkpoint: CheckpointRef | None
    heartbeat_s: HeartbeatInterval
    experiment: str

    def check(self) -> None:
        if self.generation < 0 or not 0 <= self.start_step <= self.end_step:
            raise SchemaError(f"body: generation {self.generation} and steps [{self.start_step}, {self.end_step}) "
                              "are not a trial's (generation >= 0, 0 <= start_step <= end_step)")
        check_finite(self.hparams, "body.hparams")
        self._check_ref("parent_checkpoint")
        safe_name(self.experiment, "experiment")


class Wait(ProtocolMessage, frozen=True):
    """Nothing to run yet (e.g. budget mode waits for a generation); ask again later."""

    TYPE: ClassVar[str] = "wait"
    retry_after_s: RetryAfter


class Ack(ProtocolMessage, frozen=True, omit_defaults=True):
    """The request was applied (and is durable: acks are sent after the store commits)."""

    TYPE: ClassVar[str] = "ack"
    run: RunId = ""
    """In the answer to ``hello``: this controller's run id (the worker sends it from then on)."""


class Stop(ProtocolMessage, frozen=True):
    """Stop working on ``trial_id`` (early-stopped, completed elsewhere, or expired)."""

    TYPE: ClassVar[str] = "stop"
    trial_id: PositiveInt
    reason: str


class Done(ProtocolMessage, frozen=True):
    """The experiment has ended; the worker may exit."""

    TYPE: ClassVar[str] = "done"


class Error(ProtocolMessage, frozen=True):
    """The request was rejected; ``code`` is machine-readable (see ``ERROR_CODES``)."""

    TYPE: ClassVar[str] = "error"
    CLIPPED: ClassVar[Mapping[str, int]] = {"message": MAX_ERROR_TEXT}
    code: str
    message: str


Request: TypeAlias = Hello | RequestTrial | Heartbeat | Report | Fail | WorkerLost
Reply: TypeAlias = TrialAssignment | Wait | Ack | Stop | Done | Error
Message: TypeAlias = Request | Reply

REQUEST_TYPES: dict[str, type[ProtocolMessage]] = {
    cls.TYPE: cls for cls in (Hello, RequestTrial, Heartbeat, Report, Fail, WorkerLost)
}
REPLY_TYPES: dict[str, type[ProtocolMessage]] = {
    cls.TYPE: cls for cls in (TrialAssignment, Wait, Ack, Stop, Done, Error)
}
MESSAGE_TYPES: dict[str, type[ProtocolMessage]] = {**REQUEST_TYPES, **REPLY_TYPES}


def message_from_body(type_tag: str, body: Any) -> Message:
    """Validate ``body`` as a message of ``type_tag``.

    Raises:
        SchemaError: unknown tag or a body that does not fit.
    """
    cls = MESSAGE_TYPES.get(type_tag)
    if cls is None:
        raise SchemaError(f"unknown message type {type_tag!r}")
    result: Message = cls.from_body(body)  # type: ignore[assignment]  # MESSAGE_TYPES holds only Message types
    return result
