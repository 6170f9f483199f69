"""The trial graph's records: frozen dataclasses plus their one msgpack-ready dict schema.

Layer 1: storage (``storage/``) and transport (``transport/``) import this module and nothing
else of ours besides ``errors``/``wire``. Records are immutable; a change is a new record
written with a compare-and-set ``transition`` (see ``pbt_actors.storage.trial_store.TrialStore``).

``to_dict``/``from_dict`` are the single schema used on disk and on the wire. ``from_dict``
validates types strictly (with the readers of ``pbt_actors.model.fields``), because its input may
come from a hostile peer or a damaged disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple

from pbt_actors.model.errors import SchemaError
from pbt_actors.model.fields import (
    enum_from,
    float_from,
    hparams_from,
    int_from,
    mapping_from,
    metrics_from,
    opt_float_from,
    opt_int_from,
    opt_str_from,
    str_from,
)

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
        d = mapping_from(data, "origin")
        return cls(
            kind=enum_from(OriginKind, d.get("kind"), "origin.kind"),
            initiator=opt_int_from(d.get("initiator"), "origin.initiator"),
            opponent=opt_int_from(d.get("opponent"), "origin.opponent"),
            winner=opt_int_from(d.get("winner"), "origin.winner"),
            replaces=opt_int_from(d.get("replaces"), "origin.replaces"),
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
        d = mapping_from(data, "measurement")
        return cls(int_from(d.get("step"), "measurement.step"), metrics_from(d.get("metrics"), "measurement.metrics"))


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
        d = mapping_from(data, "checkpoint")
        uri = str_from(d.get("uri"), "checkpoint.uri")
        if not uri or uri.startswith("/") or ".." in uri.split("/") or "\x00" in uri:
            raise SchemaError(f"checkpoint.uri {uri!r} must be a relative path inside the checkpoint root")
        sha = str_from(d.get("sha256"), "checkpoint.sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise SchemaError("checkpoint.sha256 must be 64 lowercase hex digits")
        size = int_from(d.get("bytes"), "checkpoint.bytes")
        if size < 0:
            raise SchemaError("checkpoint.bytes must be >= 0")
        return cls(uri, size, sha, int_from(d.get("step"), "checkpoint.step"))


@dataclass(frozen=True)
class Lease:
    """A RUNNING trial belongs to ``worker`` until ``deadline`` (controller clock, seconds)."""

    worker: str
    deadline: float

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "deadline": self.deadline}

    @classmethod
    def from_dict(cls, data: Any) -> Lease:
        d = mapping_from(data, "lease")
        return cls(str_from(d.get("worker"), "lease.worker"), float_from(d.get("deadline"), "lease.deadline"))


class AttemptRecord(NamedTuple):
    """One past attempt of a trial, as ``Trial.history`` keeps it (utilisation reports, the
    "did this worker run that attempt" check of late reports, verify's ordering checks).

    A NamedTuple, not a dataclass, on purpose: the stored and wire form stays the plain list
    ``[attempt, worker, started_at, ended_at]`` that records have always had (``list(record)``),
    and an entry still compares equal to the 4-tuple it replaces.
    """

    attempt: int
    worker: str
    started_at: float
    ended_at: float

    @classmethod
    def from_list(cls, value: Any) -> AttemptRecord:
        """Read the stored ``[attempt, worker, started, ended]`` strictly."""
        if not (isinstance(value, list | tuple) and len(value) == 4):
            raise SchemaError("trial.history entries must be [attempt, worker, started, ended]")
        return cls(int_from(value[0], "history.attempt"), str_from(value[1], "history.worker"),
                   float_from(value[2], "history.started"), float_from(value[3], "history.ended"))


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
    deaths: int = 0
    """Worker processes that died while running this trial (``worker_lost``); from the second on,
    a death is the trial's failure, not a loss (DESIGN §10, ``control.deadlines``)."""
    initiated: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    stop_reason: str | None = None
    worker: str | None = None  # who ran the attempt that completed (or last ran) it
    history: tuple[AttemptRecord, ...] = field(default=())
    """Past attempts, oldest first (stored as ``[attempt, worker, started_at, ended_at]``)."""
    collected_at: float | None = None
    """When retention deleted this trial's checkpoint file (controller clock), or None. The
    record keeps ``checkpoint`` (what it was); ``lineage``/``replay``/``report`` say
    "checkpoint collected" instead of failing. Stored only when set, so records of stores
    without retention are byte-identical to before and older readers ignore the key."""

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
            "deaths": self.deaths,
            "initiated": self.initiated,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
            "stop_reason": self.stop_reason,
            "worker": self.worker,
            "history": [list(h) for h in self.history],
            **({"collected_at": self.collected_at} if self.collected_at is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Trial:
        d = mapping_from(data, "trial")
        version = d.get("v", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaError(f"trial record has schema v{version!r}; this build reads up to v{SCHEMA_VERSION}")
        history_raw = d.get("history") or []
        if not isinstance(history_raw, list):
            raise SchemaError("trial.history must be a list")
        history = tuple(AttemptRecord.from_list(h) for h in history_raw)
        measurements = d.get("measurements") or []
        if not isinstance(measurements, list):
            raise SchemaError("trial.measurements must be a list")
        return cls(
            id=int_from(d.get("id"), "trial.id"),
            generation=int_from(d.get("generation"), "trial.generation"),
            hparams=hparams_from(d.get("hparams"), "trial.hparams"),
            start_step=int_from(d.get("start_step"), "trial.start_step"),
            end_step=int_from(d.get("end_step"), "trial.end_step"),
            origin=Origin.from_dict(d.get("origin")),
            parent_id=opt_int_from(d.get("parent_id"), "trial.parent_id"),
            crossover_id=opt_int_from(d.get("crossover_id"), "trial.crossover_id"),
            status=enum_from(TrialStatus, d.get("status"), "trial.status"),
            attempt=int_from(d.get("attempt"), "trial.attempt"),
            lease=Lease.from_dict(d["lease"]) if d.get("lease") is not None else None,
            measurements=tuple(Measurement.from_dict(m) for m in measurements),
            final=metrics_from(d["final"], "trial.final") if d.get("final") is not None else None,
            checkpoint=CheckpointRef.from_dict(d["checkpoint"]) if d.get("checkpoint") is not None else None,
            resume=CheckpointRef.from_dict(d["resume"]) if d.get("resume") is not None else None,
            completed_attempt=opt_int_from(d.get("completed_attempt"), "trial.completed_attempt"),
            losses=int_from(d.get("losses", 0), "trial.losses"),
            deaths=int_from(d.get("deaths", 0), "trial.deaths"),
            initiated=bool(d.get("initiated", False)),
            created_at=float_from(d.get("created_at", 0.0), "trial.created_at"),
            started_at=opt_float_from(d.get("started_at"), "trial.started_at"),
            ended_at=opt_float_from(d.get("ended_at"), "trial.ended_at"),
            error=opt_str_from(d.get("error"), "trial.error"),
            stop_reason=opt_str_from(d.get("stop_reason"), "trial.stop_reason"),
            worker=opt_str_from(d.get("worker"), "trial.worker"),
            history=history,
            collected_at=opt_float_from(d.get("collected_at"), "trial.collected_at"),
        )


_TRIAL_FIELDS = frozenset(f.name for f in fields(Trial))
