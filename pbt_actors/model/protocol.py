"""The protocol's message types (DESIGN §5), typed and validated.

Layer 2: imports only the data model. ``docs/protocol.md`` describes the same types and
``PROTOCOL_VERSION``; a test checks that the two agree.

Each message is a frozen dataclass with a wire ``TYPE`` tag, ``to_body()`` (plain data) and a
``from_body()`` that validates a body received from the network and raises ``SchemaError``
with a precise reason. The codec (``transport/codec.py``) wraps bodies in the envelope
``{"v": PROTOCOL_VERSION, "t": TYPE, "id": request id, "b": body}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

# ERROR_CODES is re-exported: this module lists the whole protocol (types, version, error codes);
# it is defined below the transport because ProtocolError checks its code against it.
from pbt_actors.model.errors import ERROR_CODES, SchemaError  # noqa: F401
from pbt_actors.model.fields import (
    bool_from,
    float_from,
    hparams_from,
    int_from,
    mapping_from,
    metrics_from,
    opt_int_from,
    str_from,
)
from pbt_actors.model.records import CheckpointRef, Measurement

PROTOCOL_VERSION = 2
MAX_WORKER_ID_LEN = 256
MAX_ERROR_TEXT = 64 * 1024
MAX_MEASUREMENTS = 100_000
MAX_RUN_ID_LEN = 64
MAX_HOST_WORKERS = 4096
MAX_NAME_LEN = 200
_UNSAFE_NAME = re.compile(r"[\x00-\x1f/\\\x7f]")


def _run_id(value: Any) -> str:
    """A run id (``""``: not known yet): at most ``MAX_RUN_ID_LEN`` characters."""
    text = str_from(value if value is not None else "", "run")
    if len(text) > MAX_RUN_ID_LEN:
        raise SchemaError(f"run id must be at most {MAX_RUN_ID_LEN} characters")
    return text


def safe_name(value: Any, what: str = "experiment") -> str:
    """A name used as one path component (the experiment's, under the checkpoint root):
    no ``/``, ``\\``, control characters, ``.``/``..``, at most ``MAX_NAME_LEN`` characters.
    ``""`` is allowed (the worker then uses a default)."""
    text = str_from(value, what)
    if len(text) > MAX_NAME_LEN or _UNSAFE_NAME.search(text) or text in (".", "..") or text.startswith("."):
        raise SchemaError(f"{what} name {text[:64]!r} is not a safe file name "
                          "(no /, \\, control characters, no leading dot)")
    return text


def _worker_id(value: Any) -> str:
    text = str_from(value, "worker")
    if not text or len(text) > MAX_WORKER_ID_LEN:
        raise SchemaError(f"worker id must be 1..{MAX_WORKER_ID_LEN} characters")
    return text


def _positive(value: Any, what: str) -> int:
    number = int_from(value, what)
    if number < 1:
        raise SchemaError(f"{what} must be >= 1")
    return number


# --- worker → controller -------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """A worker introduces itself (and learns the protocol is compatible from the ``ack``)."""

    TYPE: ClassVar[str] = "hello"
    worker: str
    host: str = ""
    pid: int = 0
    device: str = ""
    run: str = ""
    """The run id the sender expects; ``""`` on first contact (it learns it from the ``ack``)."""
    workers: tuple[str, ...] = ()
    """Only from a host supervisor: the worker ids of its host, which it alone may say are lost."""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "host": self.host, "pid": self.pid, "device": self.device,
                "run": self.run, "workers": list(self.workers)}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Hello:
        raw = b.get("workers", [])
        if not isinstance(raw, list) or len(raw) > MAX_HOST_WORKERS:
            raise SchemaError(f"workers must be a list of at most {MAX_HOST_WORKERS} worker ids")
        return cls(_worker_id(b.get("worker")), str_from(b.get("host", ""), "host")[:MAX_WORKER_ID_LEN],
                   int_from(b.get("pid", 0), "pid"), str_from(b.get("device", ""), "device")[:MAX_WORKER_ID_LEN],
                   _run_id(b.get("run", "")), tuple(_worker_id(w) for w in raw))


@dataclass(frozen=True)
class RequestTrial:
    """An idle worker asks for work; answered by ``trial``, ``wait`` or ``done``."""

    TYPE: ClassVar[str] = "request_trial"
    worker: str
    run: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "run": self.run}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RequestTrial:
        return cls(_worker_id(b.get("worker")), _run_id(b.get("run", "")))


@dataclass(frozen=True)
class Heartbeat:
    """Renews a lease; may carry an intermediate measurement. Answered ``ack`` or ``stop``."""

    TYPE: ClassVar[str] = "heartbeat"
    worker: str
    trial_id: int
    attempt: int
    step: int
    metrics: Mapping[str, float] | None = None
    run: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "trial_id": self.trial_id, "attempt": self.attempt,
                "step": self.step, "metrics": dict(self.metrics) if self.metrics is not None else None,
                "run": self.run}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Heartbeat:
        metrics = b.get("metrics")
        return cls(_worker_id(b.get("worker")), _positive(b.get("trial_id"), "trial_id"),
                   _positive(b.get("attempt"), "attempt"), int_from(b.get("step"), "step"),
                   metrics_from(metrics, "metrics") if metrics is not None else None, _run_id(b.get("run", "")))


@dataclass(frozen=True)
class Report:
    """A finished trial: its measurements, final metrics and checkpoint. Idempotent by
    ``(trial_id, attempt)``; the worker resends it until it gets ``ack`` (or ``stop``).

    ``next``: the worker also asks for its next trial, so the reply is what ``request_trial``
    would get (``trial``, ``wait`` or ``done``; each implies the report was applied) instead of
    ``ack``/``stop``. One round trip per trial instead of two. An ``error`` reply means the
    report was refused and nothing was leased."""

    TYPE: ClassVar[str] = "report"
    worker: str
    trial_id: int
    attempt: int
    final: Mapping[str, float]
    measurements: tuple[Measurement, ...] = ()
    checkpoint: CheckpointRef | None = None
    next: bool = False
    run: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "trial_id": self.trial_id, "attempt": self.attempt,
                "final": dict(self.final), "measurements": [m.to_dict() for m in self.measurements],
                "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None, "next": self.next,
                "run": self.run}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Report:
        raw = b.get("measurements", [])
        if not isinstance(raw, list) or len(raw) > MAX_MEASUREMENTS:
            raise SchemaError(f"measurements must be a list of at most {MAX_MEASUREMENTS}")
        ckpt = b.get("checkpoint")
        return cls(_worker_id(b.get("worker")), _positive(b.get("trial_id"), "trial_id"),
                   _positive(b.get("attempt"), "attempt"), metrics_from(b.get("final"), "final"),
                   tuple(Measurement.from_dict(m) for m in raw),
                   CheckpointRef.from_dict(ckpt) if ckpt is not None else None,
                   bool_from(b.get("next", False), "next"), _run_id(b.get("run", "")))


@dataclass(frozen=True)
class Fail:
    """A trial's attempt failed. ``retryable`` False means "this spec can never work" (e.g.
    the parent checkpoint is corrupt). ``resume`` is a checkpoint saved before a graceful
    preemption: the retry continues from it instead of from the parent."""

    TYPE: ClassVar[str] = "fail"
    worker: str
    trial_id: int
    attempt: int
    error: str
    retryable: bool = True
    resume: CheckpointRef | None = None
    preempted: bool = False
    """The worker was told to go (SIGTERM): a loss, not a failure of the trial."""
    run: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "trial_id": self.trial_id, "attempt": self.attempt,
                "error": self.error, "retryable": self.retryable,
                "resume": self.resume.to_dict() if self.resume else None, "preempted": self.preempted,
                "run": self.run}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Fail:
        resume = b.get("resume")
        return cls(_worker_id(b.get("worker")), _positive(b.get("trial_id"), "trial_id"),
                   _positive(b.get("attempt"), "attempt"), str_from(b.get("error"), "error")[:MAX_ERROR_TEXT],
                   bool_from(b.get("retryable", True), "retryable"),
                   CheckpointRef.from_dict(resume) if resume is not None else None,
                   bool_from(b.get("preempted", False), "preempted"), _run_id(b.get("run", "")))


@dataclass(frozen=True)
class WorkerLost:
    """From a supervisor: that worker process died; re-queue its trial now, not at expiry."""

    TYPE: ClassVar[str] = "worker_lost"
    worker: str
    reason: str = ""
    run: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"worker": self.worker, "reason": self.reason, "run": self.run}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> WorkerLost:
        return cls(_worker_id(b.get("worker")), str_from(b.get("reason", ""), "reason")[:MAX_ERROR_TEXT],
                   _run_id(b.get("run", "")))


# --- controller → worker --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialAssignment:
    """``trial``: run this. Carries everything a black-box worker needs, including the parent's
    checkpoint reference (verified by sha256 before loading)."""

    TYPE: ClassVar[str] = "trial"
    trial_id: int
    attempt: int
    generation: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    parent_id: int | None
    parent_checkpoint: CheckpointRef | None
    heartbeat_s: float
    experiment: str

    def to_body(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "attempt": self.attempt, "generation": self.generation,
                "hparams": dict(self.hparams), "start_step": self.start_step, "end_step": self.end_step,
                "parent_id": self.parent_id,
                "parent_checkpoint": self.parent_checkpoint.to_dict() if self.parent_checkpoint else None,
                "heartbeat_s": self.heartbeat_s, "experiment": self.experiment}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> TrialAssignment:
        ckpt = b.get("parent_checkpoint")
        return cls(_positive(b.get("trial_id"), "trial_id"), _positive(b.get("attempt"), "attempt"),
                   int_from(b.get("generation"), "generation"), hparams_from(b.get("hparams"), "hparams"),
                   int_from(b.get("start_step"), "start_step"), int_from(b.get("end_step"), "end_step"),
                   opt_int_from(b.get("parent_id"), "parent_id"),
                   CheckpointRef.from_dict(ckpt) if ckpt is not None else None,
                   float_from(b.get("heartbeat_s"), "heartbeat_s"), safe_name(b.get("experiment"), "experiment"))


@dataclass(frozen=True)
class Wait:
    """Nothing to run yet (e.g. budget mode waits for a generation); ask again later."""

    TYPE: ClassVar[str] = "wait"
    retry_after_s: float

    def to_body(self) -> dict[str, Any]:
        return {"retry_after_s": self.retry_after_s}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Wait:
        return cls(float_from(b.get("retry_after_s"), "retry_after_s"))


@dataclass(frozen=True)
class Ack:
    """The request was applied (and is durable: acks are sent after the store commits)."""

    TYPE: ClassVar[str] = "ack"
    run: str = ""
    """In the answer to ``hello``: this controller's run id (the worker sends it from then on)."""

    def to_body(self) -> dict[str, Any]:
        return {"run": self.run} if self.run else {}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Ack:
        return cls(_run_id(b.get("run", "")))


@dataclass(frozen=True)
class Stop:
    """Stop working on ``trial_id`` (early-stopped, completed elsewhere, or expired)."""

    TYPE: ClassVar[str] = "stop"
    trial_id: int
    reason: str

    def to_body(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "reason": self.reason}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Stop:
        return cls(_positive(b.get("trial_id"), "trial_id"), str_from(b.get("reason"), "reason"))


@dataclass(frozen=True)
class Done:
    """The experiment has ended; the worker may exit."""

    TYPE: ClassVar[str] = "done"

    def to_body(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Done:
        return cls()


@dataclass(frozen=True)
class Error:
    """The request was rejected; ``code`` is machine-readable (see ``ERROR_CODES``)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Error:
        return cls(str_from(b.get("code"), "code"), str_from(b.get("message"), "message")[:MAX_ERROR_TEXT])


Request: TypeAlias = Hello | RequestTrial | Heartbeat | Report | Fail | WorkerLost
Reply: TypeAlias = TrialAssignment | Wait | Ack | Stop | Done | Error
Message: TypeAlias = Request | Reply

REQUEST_TYPES: dict[str, type[Any]] = {
    cls.TYPE: cls for cls in (Hello, RequestTrial, Heartbeat, Report, Fail, WorkerLost)
}
REPLY_TYPES: dict[str, type[Any]] = {
    cls.TYPE: cls for cls in (TrialAssignment, Wait, Ack, Stop, Done, Error)
}
MESSAGE_TYPES: dict[str, type[Any]] = {**REQUEST_TYPES, **REPLY_TYPES}


def message_from_body(type_tag: str, body: Any) -> Message:
    """Validate ``body`` as a message of ``type_tag``.

    Raises:
        SchemaError: unknown tag or a body that does not fit.
    """
    cls = MESSAGE_TYPES.get(type_tag)
    if cls is None:
        raise SchemaError(f"unknown message type {type_tag!r}")
    result: Message = cls.from_body(mapping_from(body, f"{type_tag} body"))
    return result
