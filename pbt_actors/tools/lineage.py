"""Lineage of a trial: its ancestor DAG and the hyperparameter schedule that produced it.

Layer 5 (a face): reads a ``TrialStore``, never writes one.

PBT's result is not one hyperparameter setting but a *schedule*. The best trial warm-started
from its parent's checkpoint, which warm-started from its own parent, and so on back to a seed
trial trained from scratch; each link trained its own steps ``[start_step, end_step)`` with its
own hyperparameters. With crossover, a child's hyperparameters also drew on a second trial
(``crossover_id``, the tournament's loser).

* ``lineage(store, trial_id)`` is the whole **ancestor DAG**: warm-start parents *and*
  crossover sources, recursively, in a topological order (every trial comes after its parent
  and its crossover source). Computed by Kahn's algorithm, not by id order, so it stays right
  for any store whose records form a DAG; a cycle or a dangling reference is a
  ``LineageError``.
* ``schedule(store, trial_id)`` is the **warm-start chain** only: one ``Segment`` per trial
  from the seed to ``trial_id``. A crossover source contributed *hyperparameters* to a child
  (already recorded in that child's ``hparams``), never weights, so it is not a segment:
  replaying the chain reproduces the trial exactly (``pbt_actors.tools.replay``).
* A schedule round-trips through JSON (``Schedule.to_json``/``Schedule.from_json``) with a
  ``format`` tag and a ``version``; readers refuse versions newer than ``SCHEDULE_VERSION``.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from pbt_actors.model.errors import LineageError, SchemaError, TrialNotFound
from pbt_actors.model.fields import HParams, Metrics, check_finite, from_plain, is_int, to_plain
from pbt_actors.model.records import CheckpointRef, Trial
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore

SCHEDULE_FORMAT = "pbt-actors-schedule"
LINEAGE_FORMAT = "pbt-actors-lineage"
# Bump when the JSON shape of a schedule changes; readers refuse newer versions.
SCHEDULE_VERSION = 1
LINEAGE_VERSION = 1

EdgeKind = Literal["parent", "crossover"]


# --- lineage: the ancestor DAG ------------------------------------------------------------------
class LineageEdge(msgspec.Struct, frozen=True, rename={"source": "from", "target": "to"}):
    """``source`` → ``target``: a warm start (``parent``) or a crossover source (``crossover``).
    Exported as ``{"from", "to", "kind"}``."""

    source: int
    target: int
    kind: EdgeKind


class TrialSummary(msgspec.Struct, frozen=True):
    """A trial as the lineage export lists it."""

    id: int
    generation: int
    parent_id: int | None
    crossover_id: int | None
    origin: str
    status: str
    start_step: int
    end_step: int
    hparams: Mapping[str, Any]
    final: Mapping[str, float] | None

    @classmethod
    def of(cls, trial: Trial) -> TrialSummary:
        return cls(trial.id, trial.generation, trial.parent_id, trial.crossover_id, trial.origin.kind.value,
                   trial.status.value, trial.start_step, trial.end_step, trial.hparams, trial.final)


class LineageFile(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON form of a ``Lineage`` (``pbt-actors lineage --json``)."""

    format: str = LINEAGE_FORMAT
    version: int = LINEAGE_VERSION
    trial_id: int
    order: list[int]
    trials: tuple[TrialSummary, ...]
    edges: tuple[LineageEdge, ...]


@dataclass(frozen=True)
class Lineage:
    """The ancestors of ``trial_id`` (and itself), topologically sorted, and the edges among them."""

    trial_id: int
    trials: tuple[Trial, ...]
    edges: tuple[LineageEdge, ...]

    @property
    def order(self) -> list[int]:
        """Trial ids in topological order (parents and crossover sources first)."""
        return [t.id for t in self.trials]

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials)

    def __len__(self) -> int:
        return len(self.trials)

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(LineageFile(
            trial_id=self.trial_id, order=self.order, trials=tuple(TrialSummary.of(t) for t in self.trials),
            edges=self.edges))
        return plain


def _sources(trial: Trial, crossover: bool) -> list[tuple[int, EdgeKind]]:
    out: list[tuple[int, EdgeKind]] = []
    if trial.parent_id is not None:
        out.append((trial.parent_id, "parent"))
    if crossover and trial.crossover_id is not None and trial.crossover_id != trial.parent_id:
        out.append((trial.crossover_id, "crossover"))
    return out


def lineage(store: TrialStore, trial_id: int, *, crossover: bool = True) -> Lineage:
    """The ancestor DAG of ``trial_id`` in topological order.

    Args:
        crossover: follow crossover sources (and their ancestors) too. ``False`` gives just
            the warm-start chain.
    Returns:
        Every ancestor once, each after all of its sources; ties are broken by
        ``(generation, id)`` so the order is deterministic. ``trial_id`` itself is last.
    Raises:
        TrialNotFound: no trial ``trial_id``.
        LineageError: an ancestor names a trial that is not in the store, or the references
            form a cycle (a damaged store).
    """
    root = store.get_trial(trial_id)
    found: dict[int, Trial] = {root.id: root}
    edges: list[LineageEdge] = []
    todo = [root]
    while todo:
        trial = todo.pop()
        for source_id, kind in _sources(trial, crossover):
            edges.append(LineageEdge(source_id, trial.id, kind))
            if source_id in found:
                continue
            source = store.find_trial(source_id)
            if source is None:
                raise LineageError(f"trial {trial.id} names {kind} {source_id}, which is not in the store")
            found[source_id] = source
            todo.append(source)
    # Kahn's algorithm over the collected sub-graph.
    waiting = {i: 0 for i in found}
    dependants: dict[int, list[int]] = {i: [] for i in found}
    for edge in set(edges):
        waiting[edge.target] += 1
        dependants[edge.source].append(edge.target)
    ready = [(found[i].generation, i) for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[Trial] = []
    while ready:
        _, current = heapq.heappop(ready)
        order.append(found[current])
        for nxt in dependants[current]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, (found[nxt].generation, nxt))
    if len(order) != len(found):
        stuck = sorted(i for i, n in waiting.items() if n > 0)
        raise LineageError(f"the ancestry of trial {trial_id} has a cycle through trials {stuck[:10]}")
    edges_sorted = sorted(set(edges), key=lambda e: (e.target, e.kind != "parent", e.source))
    return Lineage(trial_id, tuple(order), tuple(edges_sorted))


# --- schedule: the warm-start chain -------------------------------------------------------------
class Segment(msgspec.Struct, frozen=True):
    """Train ``hparams`` for steps ``[start_step, end_step)``, as trial ``trial_id`` did.

    ``crossover_id`` only says where some of ``hparams`` came from; ``final`` and
    ``checkpoint`` are what the original trial produced (for comparison, and as the start of
    a sub-range replay).
    """

    start_step: int
    end_step: int
    hparams: HParams
    trial_id: int
    generation: int = 0
    crossover_id: int | None = None
    final: Metrics | None = None
    checkpoint: CheckpointRef | None = None
    collected: bool = False
    """Retention deleted ``checkpoint``'s file: a replay cannot start from it (from scratch can).
    Written only when true."""

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(self)
        if not self.collected:
            del plain["collected"]
        return plain

    def check(self, what: str) -> None:
        """What the annotations cannot say: finite hyperparameters, a safe checkpoint uri."""
        check_finite(self.hparams, f"{what}.hparams")
        if self.checkpoint is not None:
            self.checkpoint.check(f"{what}.checkpoint")


class ScheduleFile(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON form of a ``Schedule``. ``start_step``, ``end_step`` and ``final`` are derived
    from the segments (written for a reader's convenience, ignored when read)."""

    format: str = SCHEDULE_FORMAT
    version: int = SCHEDULE_VERSION
    experiment: str = ""
    trial_id: int
    objective: dict[str, Any] | None = None
    start_step: int | None = None
    end_step: int | None = None
    final: Metrics | None = None
    metadata: dict[str, Any] = {}
    segments: list[Segment]


@dataclass(frozen=True)
class Schedule:
    """The hyperparameter schedule that produced trial ``trial_id``: contiguous segments from
    ``start_step`` (0 for a chain that starts from scratch) to the trial's ``end_step``."""

    trial_id: int
    segments: tuple[Segment, ...]
    experiment: str = ""
    objective: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.segments:
            raise LineageError("a schedule needs at least one segment")
        for seg in self.segments:
            if seg.end_step <= seg.start_step:
                raise LineageError(f"segment of trial {seg.trial_id} has an empty step range "
                                   f"[{seg.start_step}, {seg.end_step})")
        for prev, seg in zip(self.segments, self.segments[1:], strict=False):
            if seg.start_step != prev.end_step:
                raise LineageError(f"trial {seg.trial_id} starts at step {seg.start_step} but its parent "
                                   f"{prev.trial_id} ended at step {prev.end_step}")

    @property
    def start_step(self) -> int:
        return self.segments[0].start_step

    @property
    def end_step(self) -> int:
        return self.segments[-1].end_step

    @property
    def final(self) -> Mapping[str, float] | None:
        """What the scheduled trial reported (None if it had not completed)."""
        return self.segments[-1].final

    @property
    def boundaries(self) -> list[int]:
        """Steps where a segment starts or the schedule ends: the steps a replay can run between."""
        return [s.start_step for s in self.segments] + [self.end_step]

    def hparams_at(self, step: int) -> Mapping[str, Any]:
        """The hyperparameters in force while training step ``step`` (0-based)."""
        for seg in self.segments:
            if seg.start_step <= step < seg.end_step:
                return seg.hparams
        raise ValueError(f"step {step} is outside the schedule [{self.start_step}, {self.end_step})")

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(ScheduleFile(
            experiment=self.experiment, trial_id=self.trial_id,
            objective=dict(self.objective) if self.objective is not None else None,
            start_step=self.start_step, end_step=self.end_step,
            final=dict(self.final) if self.final is not None else None, metadata=dict(self.metadata),
            segments=[]))
        plain["segments"] = [s.to_dict() for s in self.segments]
        return plain

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> Schedule:
        """Read a schedule written by ``to_dict`` (this or an older version).

        Raises:
            LineageError: not a schedule, a newer version, or a malformed field (named).
        """
        if not isinstance(data, Mapping):
            raise LineageError("a schedule must be a JSON object")
        if data.get("format") != SCHEDULE_FORMAT:
            raise LineageError(f"not a pbt-actors schedule (format is {data.get('format')!r}, "
                               f"expected {SCHEDULE_FORMAT!r})")
        version = data.get("version")
        if not is_int(version) or version < 1:
            raise LineageError(f"schedule version must be a positive integer, got {version!r}")
        if version > SCHEDULE_VERSION:
            raise LineageError(f"schedule version {version} is newer than this pbt-actors reads "
                               f"({SCHEDULE_VERSION}); upgrade pbt-actors")
        try:
            file = from_plain(data, ScheduleFile, "schedule")
            for i, segment in enumerate(file.segments):
                segment.check(f"schedule.segments[{i}]")
        except SchemaError as exc:
            raise LineageError(f"malformed schedule: {exc}") from exc
        return cls(file.trial_id, tuple(file.segments), file.experiment, file.objective, file.metadata)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LineageError(f"schedule is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON form to ``path`` (folders created); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json() + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise LineageError(f"cannot read schedule {path}: {exc.strerror or exc}") from exc
        return cls.from_json(text)


def schedule(store: TrialStore, trial_id: int) -> Schedule:
    """The warm-start chain of ``trial_id`` as segments, seed first.

    Crossover sources are not segments: they gave the child some hyperparameters (already in
    the child's own ``hparams``) but no weights. The experiment's name and objective are
    copied from the store's meta when present.

    Raises:
        TrialNotFound: no trial ``trial_id``.
        LineageError: a parent is missing, the chain loops, or a child does not start where
            its parent ended.
    """
    chain: list[Trial] = []
    seen: set[int] = set()
    current: Trial | None = store.get_trial(trial_id)
    while current is not None:
        if current.id in seen:
            raise LineageError(f"the warm-start chain of trial {trial_id} loops at trial {current.id}")
        seen.add(current.id)
        chain.append(current)
        if current.parent_id is None:
            break
        parent = store.find_trial(current.parent_id)
        if parent is None:
            raise LineageError(f"trial {current.id} warm-started from {current.parent_id}, which is not in the store")
        current = parent
    chain.reverse()
    segments = tuple(
        Segment(t.start_step, t.end_step, dict(t.hparams), t.id, t.generation, t.crossover_id,
                dict(t.final) if t.final is not None else None, t.checkpoint or store.checkpoint(t.id),
                t.collected_at is not None)
        for t in chain)
    experiment_name, objective = "", None
    stored = store.get_meta("experiment")
    if isinstance(stored, Mapping):
        experiment_name = str(stored.get("name") or "")
        objective = stored.get("objective") if isinstance(stored.get("objective"), Mapping) else None
    return Schedule(trial_id, segments, experiment_name, objective)


# --- resolving "best" ---------------------------------------------------------------------------
def resolve_trial(store: TrialStore, which: str | int) -> int:
    """A trial id from a CLI argument: an integer, or ``best`` (the best COMPLETED trial).

    Raises:
        LineageError: ``best`` on a store with no completed trial or no experiment; a
            malformed id.
        TrialNotFound: no such id.
    """
    if isinstance(which, int) or (isinstance(which, str) and which.strip().isdigit()):
        trial_id = int(which)
        if store.find_trial(trial_id) is None:
            raise TrialNotFound(trial_id)
        return trial_id
    if str(which).strip().lower() != "best":
        raise LineageError(f"expected a trial id or 'best', got {which!r}")
    from pbt_actors.control.progress import best_completed
    from pbt_actors.model.experiment import Experiment

    raw = store.get_meta(META_EXPERIMENT)
    if raw is None:
        raise LineageError("the store holds no experiment definition, so 'best' is undefined; give a trial id")
    best = best_completed(store, Experiment.from_dict(raw))
    if best is None:
        raise LineageError("no completed trial yet, so there is no 'best'; give a trial id")
    return best.id

