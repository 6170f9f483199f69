"""The trial graph's records: frozen dataclasses plus their one msgpack-ready dict schema.

Layer 1: storage (``storage/``) and transport (``transport/``) import this module and nothing
else of ours besides ``errors``/``wire``. Records are immutable; a change is a new record
written with a compare-and-set ``transition`` (see ``pbt_actors.storage.base.TrialStore``).

``to_dict``/``from_dict`` are the single schema used on disk and on the wire. ``from_dict``
validates types strictly, because its input may come from a hostile peer or a damaged disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from pbt_actors.model.errors import SchemaError

# Bump when a stored or wire record changes shape; readers refuse newer versions.
SCHEMA_VERSION = 1


class TrialStatus(StrEnum):
    """Life cycle: PENDING → RUNNING → COMPLETED | STOPPED | FAILED (RUNNING → PENDING on loss).

    Values are stored on disk: never renumber or remove one.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.FAILED)

    @property
    def active(self) -> bool:
        return self in (TrialStatus.PENDING, TrialStatus.RUNNING)


class OriginKind(StrEnum):
    """Why a trial exists. Stored on disk: never remove a value."""

    SEED = "seed"  # sampled from the prior (or given by the user), generation 0
    TOURNAMENT = "tournament"  # initiator-based evolution: initiator vs opponent
    TRUNCATION = "truncation"  # Jaderberg et al.: bottom quantile copies a top member
    CONTINUE = "continue"  # same hyperparameters, next steps (random baseline, truncation top)
    REPLACEMENT = "replacement"  # stands in for a FAILED/STOPPED trial so evolution goes on
    REPLAY = "replay"


@dataclass(frozen=True)
class Origin:
    """How a trial came to be: enough to audit every decision from the store alone."""

    kind: OriginKind
    initiator: int | None = None
    opponent: int | None = None
    winner: int | None = None
    replaces: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "initiator": self.initiator, "opponent": self.opponent,
                "winner": self.winner, "replaces": self.replaces}

    @classmethod
    def from_dict(cls, data: Any) -> Origin:
        d = _mapping(data, "origin")
        return cls(
            kind=_enum(OriginKind, d.get("kind"), "origin.kind"),
            initiator=_opt_int(d.get("initiator"), "origin.initiator"),
            opponent=_opt_int(d.get("opponent"), "origin.opponent"),
            winner=_opt_int(d.get("winner"), "origin.winner"),
            replaces=_opt_int(d.get("replaces"), "origin.replaces"),
        )


@dataclass(frozen=True)
class Measurement:
    """Metrics observed at a training step (intermediate, via heartbeats, or final)."""

    step: int
    metrics: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, data: Any) -> Measurement:
        d = _mapping(data, "measurement")
        return cls(_int(d.get("step"), "measurement.step"), metrics_from(d.get("metrics"), "measurement.metrics"))


@dataclass(frozen=True)
class CheckpointRef:
    """Where a trial's final state lives. ``uri`` is relative to the checkpoint root."""

    uri: str
    bytes: int
    sha256: str
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "bytes": self.bytes, "sha256": self.sha256, "step": self.step}

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointRef:
        d = _mapping(data, "checkpoint")
        uri = _str(d.get("uri"), "checkpoint.uri")
        if not uri or uri.startswith("/") or ".." in uri.split("/") or "\x00" in uri:
            raise SchemaError(f"checkpoint.uri {uri!r} must be a relative path inside the checkpoint root")
        sha = _str(d.get("sha256"), "checkpoint.sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise SchemaError("checkpoint.sha256 must be 64 lowercase hex digits")
        size = _int(d.get("bytes"), "checkpoint.bytes")
        if size < 0:
            raise SchemaError("checkpoint.bytes must be >= 0")
        return cls(uri, size, sha, _int(d.get("step"), "checkpoint.step"))


@dataclass(frozen=True)
class Lease:
    """A RUNNING trial belongs to ``worker`` until ``deadline`` (controller clock, seconds)."""

    worker: str
    deadline: float

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "deadline": self.deadline}

    @classmethod
    def from_dict(cls, data: Any) -> Lease:
        d = _mapping(data, "lease")
        return cls(_str(d.get("worker"), "lease.worker"), _float(d.get("deadline"), "lease.deadline"))


@dataclass(frozen=True)
class TrialSpec:
    """What a policy asks for: everything about a trial that a decision determines."""

    generation: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    origin: Origin
    parent_id: int | None = None
    crossover_id: int | None = None


@dataclass(frozen=True)
class Trial:
    """One short training session: train ``hparams`` for ``[start_step, end_step)``,
    warm-started from ``parent_id``'s checkpoint (or from scratch)."""

    id: int
    generation: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    origin: Origin
    parent_id: int | None = None
    crossover_id: int | None = None
    status: TrialStatus = TrialStatus.PENDING
    attempt: int = 1
    lease: Lease | None = None
    measurements: tuple[Measurement, ...] = ()
    final: Mapping[str, float] | None = None
    checkpoint: CheckpointRef | None = None
    resume: CheckpointRef | None = None
    """A checkpoint saved by a gracefully preempted attempt; the retry continues from it."""
    completed_attempt: int | None = None
    losses: int = 0
    """Attempts lost to the machine (expiry, worker lost, preemption), not to the trial."""
    initiated: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    stop_reason: str | None = None
    worker: str | None = None  # who ran the attempt that completed (or last ran) it
    history: tuple[tuple[int, str, float, float], ...] = field(default=())
    """Past attempts: (attempt, worker, started_at, ended_at); feeds utilisation reports."""

    @classmethod
    def from_spec(cls, trial_id: int, spec: TrialSpec, now: float) -> Trial:
        return cls(
            id=trial_id, generation=spec.generation, hparams=dict(spec.hparams),
            start_step=spec.start_step, end_step=spec.end_step, origin=spec.origin,
            parent_id=spec.parent_id, crossover_id=spec.crossover_id, created_at=now,
        )

    def evolve(self, **changes: Any) -> Trial:
        """A copy with ``changes`` (records are frozen; this is how transitions are built).

        ``dataclasses.replace`` re-runs ``__init__`` (~9 µs); a record is rewritten several times
        per trial, so this copies the instance dict instead (~1 µs). Trial has no
        ``__post_init__``, so nothing is skipped; unknown names still raise.
        """
        unknown = changes.keys() - _TRIAL_FIELDS
        if unknown:
            raise TypeError(f"Trial has no field(s) {sorted(unknown)}")
        new = object.__new__(Trial)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "generation": self.generation,
            "hparams": dict(self.hparams),
            "start_step": self.start_step,
            "end_step": self.end_step,
            "origin": self.origin.to_dict(),
            "parent_id": self.parent_id,
            "crossover_id": self.crossover_id,
            "status": self.status.value,
            "attempt": self.attempt,
            "lease": self.lease.to_dict() if self.lease else None,
            "measurements": [m.to_dict() for m in self.measurements],
            "final": dict(self.final) if self.final is not None else None,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "resume": self.resume.to_dict() if self.resume else None,
            "completed_attempt": self.completed_attempt,
            "losses": self.losses,
            "initiated": self.initiated,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
            "stop_reason": self.stop_reason,
            "worker": self.worker,
            "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Trial:
        d = _mapping(data, "trial")
        version = d.get("v", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaError(f"trial record has schema v{version!r}; this build reads up to v{SCHEMA_VERSION}")
        history_raw = d.get("history") or []
        if not isinstance(history_raw, list):
            raise SchemaError("trial.history must be a list")
        history = []
        for h in history_raw:
            if not (isinstance(h, list | tuple) and len(h) == 4):
                raise SchemaError("trial.history entries must be [attempt, worker, started, ended]")
            history.append((_int(h[0], "history.attempt"), _str(h[1], "history.worker"),
                            _float(h[2], "history.started"), _float(h[3], "history.ended")))
        measurements = d.get("measurements") or []
        if not isinstance(measurements, list):
            raise SchemaError("trial.measurements must be a list")
        return cls(
            id=_int(d.get("id"), "trial.id"),
            generation=_int(d.get("generation"), "trial.generation"),
            hparams=hparams_from(d.get("hparams"), "trial.hparams"),
            start_step=_int(d.get("start_step"), "trial.start_step"),
            end_step=_int(d.get("end_step"), "trial.end_step"),
            origin=Origin.from_dict(d.get("origin")),
            parent_id=_opt_int(d.get("parent_id"), "trial.parent_id"),
            crossover_id=_opt_int(d.get("crossover_id"), "trial.crossover_id"),
            status=_enum(TrialStatus, d.get("status"), "trial.status"),
            attempt=_int(d.get("attempt"), "trial.attempt"),
            lease=Lease.from_dict(d["lease"]) if d.get("lease") is not None else None,
            measurements=tuple(Measurement.from_dict(m) for m in measurements),
            final=metrics_from(d["final"], "trial.final") if d.get("final") is not None else None,
            checkpoint=CheckpointRef.from_dict(d["checkpoint"]) if d.get("checkpoint") is not None else None,
            resume=CheckpointRef.from_dict(d["resume"]) if d.get("resume") is not None else None,
            completed_attempt=_opt_int(d.get("completed_attempt"), "trial.completed_attempt"),
            losses=_int(d.get("losses", 0), "trial.losses"),
            initiated=bool(d.get("initiated", False)),
            created_at=_float(d.get("created_at", 0.0), "trial.created_at"),
            started_at=_opt_float(d.get("started_at"), "trial.started_at"),
            ended_at=_opt_float(d.get("ended_at"), "trial.ended_at"),
            error=_opt_str(d.get("error"), "trial.error"),
            stop_reason=_opt_str(d.get("stop_reason"), "trial.stop_reason"),
            worker=_opt_str(d.get("worker"), "trial.worker"),
            history=tuple(history),
        )


_TRIAL_FIELDS = frozenset(f.name for f in fields(Trial))


# --- strict field readers: the schema's teeth ------------------------------------------------
def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{what} must be a map, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SchemaError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _float(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SchemaError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _opt_float(value: Any, what: str) -> float | None:
    return None if value is None else _float(value, what)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _enum(enum: type[Any], value: Any, what: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise SchemaError(f"{what}: unknown value {value!r}") from None


def metrics_from(value: Any, what: str) -> dict[str, float]:
    """Validate a metrics map: string keys, numeric values (NaN/inf allowed: they just lose)."""
    d = _mapping(value, what)
    out: dict[str, float] = {}
    for key, raw in d.items():
        if not isinstance(key, str):
            raise SchemaError(f"{what}: metric names must be strings")
        out[key] = _float(raw, f"{what}[{key!r}]")
    return out


def hparams_from(value: Any, what: str) -> dict[str, Any]:
    """Validate hyperparameters: string keys, scalar values (bool, number, string)."""
    d = _mapping(value, what)
    for key, raw in d.items():
        if not isinstance(key, str):
            raise SchemaError(f"{what}: names must be strings")
        if not isinstance(raw, bool | int | float | str):
            raise SchemaError(f"{what}[{key!r}] must be a bool, number or string")
        if isinstance(raw, float) and not math.isfinite(raw):
            raise SchemaError(f"{what}[{key!r}] must be finite")
    return dict(d)
