"""The trial graph's records, declared once as frozen msgspec Structs.

Layer 1: storage (``storage/``) and transport (``transport/``) import this module and nothing
else of ours besides ``errors``/``wire``. Records are immutable; a change is a new record
written with a compare-and-set ``transition`` (see ``pbt_actors.storage.trial_store.TrialStore``).

The field declarations are the schema used on disk and on the wire: ``to_dict`` is their plain
form in declaration order, ``from_dict`` validates plain data against them strictly
(``pbt_actors.model.fields``), because it may come from a hostile peer or a damaged disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Self

import msgspec

from pbt_actors.model.errors import SchemaError
from pbt_actors.model.fields import (
    HParamValue,
    NonNegativeInt,
    Sha256,
    check_finite,
    check_relative_uri,
    from_plain,
    to_builtins,
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


class Record(msgspec.Struct, frozen=True):
    """A record: its fields are its schema, in the order they are stored."""

    WHAT: ClassVar[str] = "record"
    """How error messages name it (``checkpoint.uri``)."""

    def to_dict(self) -> dict[str, Any]:
        """The stored form (arrays as tuples or lists: msgpack writes both as arrays)."""
        plain: dict[str, Any] = to_builtins(self)
        return plain

    @classmethod
    def from_dict(cls, data: Any, what: str | None = None) -> Self:
        """Validate ``data`` strictly. Raises: ``SchemaError`` naming the field."""
        where = what or cls.WHAT
        record = from_plain(data, cls, where)
        record.check(where)
        return record

    def check(self, what: str) -> None:
        """The rules no annotation states (overridden where there are some)."""


class Origin(Record, frozen=True):
    """How a trial came to be: enough to audit every decision from the store alone."""

    WHAT: ClassVar[str] = "origin"
    kind: OriginKind
    initiator: int | None = None
    opponent: int | None = None
    winner: int | None = None
    replaces: int | None = None


class Measurement(Record, frozen=True):
    """Metrics observed at a training step (intermediate, via heartbeats, or final)."""

    WHAT: ClassVar[str] = "measurement"
    step: int
    metrics: Mapping[str, float]


class CheckpointRef(Record, frozen=True):
    """Where a trial's final state lives. ``uri`` is relative to the checkpoint root."""

    WHAT: ClassVar[str] = "checkpoint"
    uri: str
    bytes: NonNegativeInt
    sha256: Sha256
    step: int

    def check(self, what: str) -> None:
        check_relative_uri(self.uri, f"{what}.uri")


def trial_checkpoint_prefix(experiment: str, trial_id: int) -> str:
    """The key prefix under which trial ``trial_id`` writes its checkpoints (the worker's trial
    context) and the only one a report of that trial may name: the controller refuses a ref
    outside it, and retention deletes only such files, so no trial can have another's deleted."""
    return f"{experiment or 'exp'}/trial-{trial_id:06d}/"


MANIFEST_SUFFIX = ".manifest"
"""The uri of a directory checkpoint's manifest ends so (``is_directory_checkpoint``)."""
FILES_SUFFIX = ".files"
"""``a-<sha16>.manifest``'s files live under ``a-<sha16>.files/`` (``directory_files_folder``)."""


def is_directory_checkpoint(ref: CheckpointRef) -> bool:
    """Whether ``ref`` names a directory checkpoint (its manifest) rather than one file
    (docs/design.md §8.6: the ref's bytes and sha256 are the manifest's)."""
    return ref.uri.endswith(MANIFEST_SUFFIX)


def directory_files_folder(manifest_uri: str) -> str:
    """The folder key holding the files of the directory checkpoint whose manifest is
    ``manifest_uri`` (``exp/trial-000001/a1-s5-<sha16>.manifest`` -> ``...-<sha16>.files``):
    derived from the manifest's key alone, so retention and ``gc`` delete a directory
    checkpoint whole knowing only its ``CheckpointRef``, and its files stay under the
    trial's own prefix."""
    return manifest_uri.removesuffix(MANIFEST_SUFFIX) + FILES_SUFFIX


def output_log_uri(experiment: str, trial_id: int, attempt: int) -> str:
    """Where a command trial's attempt keeps its stdout/stderr tail (``runtime/command/output_log.py``):
    under the trial's own prefix, beside its checkpoints, so every host can write it."""
    return f"{trial_checkpoint_prefix(experiment, trial_id)}output-a{attempt}.log"


def is_output_log(uri: str) -> bool:
    """Whether ``uri`` is an attempt's output log (``output_log_uri``): not a checkpoint, so
    sweeps of files no record needs must leave it for ``lineage``/``status --output``."""
    name = uri.rsplit("/", 1)[-1]
    return name.startswith("output-a") and name.endswith(".log") and name[8:-4].isdigit()


def owns_checkpoint(experiment: str, trial_id: int, ref: CheckpointRef) -> bool:
    """Whether ``ref`` lies under trial ``trial_id``'s own prefix (``trial_checkpoint_prefix``)."""
    return ref.uri.startswith(trial_checkpoint_prefix(experiment, trial_id))


class Lease(Record, frozen=True):
    """A RUNNING trial belongs to ``worker`` until ``deadline`` (controller clock, seconds)."""

    WHAT: ClassVar[str] = "lease"
    worker: str
    deadline: float


class AttemptRecord(NamedTuple):
    """One past attempt of a trial, as ``Trial.history`` keeps it (utilisation reports, the
    "did this worker run that attempt" check of late reports, verify's ordering checks).

    A NamedTuple, not a Struct, on purpose: the stored and wire form stays the plain list
    ``[attempt, worker, started_at, ended_at]`` that records have always had, and an entry
    still compares equal to the 4-tuple it replaces.
    """

    attempt: int
    worker: str
    started_at: float
    ended_at: float


class TrialWork(msgspec.Struct, frozen=True, kw_only=True):
    """What a trial trains: ``hparams`` for steps ``[start_step, end_step)``, in ``generation``.

    Declared once and shared by the policy's request (``TrialSpec``), the stored record
    (``Trial``) and the wire's assignment (``protocol.TrialAssignment``). Keyword-only on
    purpose: msgspec orders positional fields before keyword-only ones, so a subclass's
    identifying field (``Trial.id``, the assignment's ``trial_id``/``attempt``) stays first in
    the stored and wire key order although these fields are inherited."""

    generation: int
    hparams: Mapping[str, HParamValue]
    start_step: int
    end_step: int

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


class TrialSpec(TrialWork, frozen=True, kw_only=True):
    """What a policy asks for: everything about a trial that a decision determines."""

    origin: Origin
    parent_id: int | None = None
    crossover_id: int | None = None


class _IdentifiedSpec(TrialSpec, Record, frozen=True):
    """A spec with its store id (positional, so it comes first: see ``TrialWork``)."""

    id: int


class Trial(_IdentifiedSpec, frozen=True, kw_only=True, tag_field="v", tag=SCHEMA_VERSION):
    """One short training session: train ``hparams`` for ``[start_step, end_step)``,
    warm-started from ``parent_id``'s checkpoint (or from scratch): its spec, then its life.

    Stored as a map whose first key is the schema version ``"v"`` (the struct's tag), then
    ``id``, the spec's fields and the fields below, in this order."""

    WHAT: ClassVar[str] = "trial"
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
    a death is the trial's failure, not a loss (docs/design.md §6.4, ``control.deadlines``)."""
    initiated: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    stop_reason: str | None = None
    worker: str | None = None  # who ran the attempt that completed (or last ran) it
    history: tuple[AttemptRecord, ...] = ()
    """Past attempts, oldest first (stored as ``[attempt, worker, started_at, ended_at]``)."""
    collected_at: float | None = None
    """When retention deleted this trial's checkpoint file (controller clock), or None. The
    record keeps ``checkpoint`` (what it was); ``lineage``/``replay``/``report`` say
    "checkpoint collected" instead of failing. Stored only when set, so records of stores
    without retention are byte-identical to before and older readers ignore the key."""

    @classmethod
    def from_spec(cls, trial_id: int, spec: TrialSpec, now: float) -> Trial:
        fields = msgspec.structs.asdict(spec)
        fields["hparams"] = dict(spec.hparams)
        return cls(id=trial_id, created_at=now, **fields)

    def evolve(self, **changes: Any) -> Trial:
        """A copy with ``changes`` (records are frozen; this is how transitions are built)."""
        return msgspec.structs.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        plain = super().to_dict()
        if plain["collected_at"] is None:
            del plain["collected_at"]
        return plain

    @classmethod
    def from_dict(cls, data: Any, what: str | None = None) -> Self:
        version = data.get("v", SCHEMA_VERSION) if isinstance(data, dict) else SCHEMA_VERSION
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaError(f"trial record has schema v{version!r}; this build reads up to v{SCHEMA_VERSION}")
        return super().from_dict(data, what)

    def check(self, what: str) -> None:
        check_finite(self.hparams, f"{what}.hparams")
        for name in ("checkpoint", "resume"):
            ref = getattr(self, name)
            if ref is not None:
                ref.check(f"{what}.{name}")
