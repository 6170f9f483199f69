"""The ``TrialStore`` interface: the trial graph, its indexes, the checkpoint index and meta.

Layer 2: imports only the data model and the key limits of ``schema``. Two implementations
honour it, checked by one contract suite (``tests/contract``): ``InMemoryTrialStore``
(simulations, unit tests) and ``LmdbTrialStore`` (everything real).

Contracts every implementation keeps:

* **Single writer.** One controller writes; readers (CLI ``status``) may read concurrently
  from other processes (LMDB) and always see a committed snapshot.
* **Immutable records.** Returned ``Trial`` objects are frozen and never aliased by later
  writes; a change is a new record written by ``transition`` (compare-and-set).
* **Derived indexes are the store's job.** ``children``, ``generation``, status, the
  uninitiated-initiator set, per-status counts and the checkpoint index are kept consistent
  with the records inside the same write; callers never maintain them. Which entries a record
  implies is decided in one place, ``pbt_actors.storage.indexes.index_edits``.
* **Batches are atomic.** Writes inside ``with store.batch():`` commit together (one fsync for
  LMDB) or, if the block raises, not at all. Reads inside the batch see its writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from pbt_actors.model.errors import SchemaError, TrialNotFound
from pbt_actors.model.fields import hparams_from, is_int
from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import CheckpointRef, Measurement, Trial, TrialSpec, TrialStatus
from pbt_actors.storage.schema import MAX_GENERATION, MAX_ID  # the widths of the index keys on disk

TRIAL_ID_COUNTER = "next_trial_id"
STEPS_LEASED = "steps_leased"
STEPS_QUEUED = "steps_queued"
"""Counters of the steps charged to the search (``pbt_actors.model.trial_cost``), kept by every
store in the transaction of each record write."""
STEPS_RETRIED = "steps_retried"
"""Steps re-leased by retries (``trial_cost.retry_charge``): not charged, reported. Counted from
this version on (a store written before reads 0 for its earlier retries)."""

# Meta keys of a run, next to the store schema because every face reads them (status, report,
# lineage, verify) and none of those should import the controller that writes them.
META_EXPERIMENT = "experiment"
"""The experiment definition (``Experiment.to_dict()``), written by the controller at creation."""
META_FINISHED_AT = "finished_at"
"""Controller clock time at which the controller declared the run over (absent while it runs)."""
META_EXPERIMENT_FILE = "experiment_file"
"""``{"path": absolute path, "sha256": hex}`` of the experiment file the run was last started
from (``run``/``controller``), so ``replay`` can default to it and tell when it changed."""
META_CHECKPOINT_ROOT = "checkpoint_root"
"""The checkpoint root (a folder's absolute path or a URL) the controller was last started with
(``controller --checkpoint-root``, ``run``), so ``status`` finds the hosts' state files and
``verify`` the checkpoints without being told (issue 21, item 6). Absent: started without one.
``SIMULATED_CHECKPOINTS``: a simulator's store, whose checkpoint refs point at no file."""
SIMULATED_CHECKPOINTS = "simulated:"
"""``META_CHECKPOINT_ROOT`` of a store the simulator wrote (``pbt-actors sim --store lmdb``)."""
META_RUN_ID = "run_id"
"""The run id (a uuid4 hex), fixed when the store is first opened by a controller: workers name
it in every message, so a worker of another run (store) is refused (docs/design.md §10, run identity)."""


class TrialStore(ABC):
    """Persistent trial graph. Thread-safety: one thread writes; see module docstring."""

    # --- meta ---------------------------------------------------------------------------------
    @abstractmethod
    def get_meta(self, key: str) -> Any:
        """The value stored under ``key`` in ``meta``, or None."""

    @abstractmethod
    def put_meta(self, key: str, value: Any) -> None:
        """Store plain data (msgpack-able) under ``key``.

        ``get_meta`` returns what a msgpack round trip gives (tuples come back as lists), in
        every implementation. Keys ``schema_version`` and ``counter:*`` are the store's own.

        Raises:
            WireError: ``value`` is not msgpack-able; nothing is written.
        """

    @abstractmethod
    def incr_counter(self, name: str, delta: int = 1) -> int:
        """Add ``delta`` to a named counter and return the new value (starts at 0)."""

    @abstractmethod
    def counter(self, name: str) -> int:
        """Current value of a named counter (0 if never incremented)."""

    # --- trials -------------------------------------------------------------------------------
    @abstractmethod
    def create_trial(self, spec: TrialSpec, now: float) -> Trial:
        """Create a PENDING trial with the next dense id (1, 2, ...) and return it.

        Raises:
            ValueError: the spec cannot be indexed (see ``check_spec``); nothing is written.
        """

    @abstractmethod
    def find_trial(self, trial_id: int) -> Trial | None:
        """The trial, or None."""

    @abstractmethod
    def transition(self, trial_id: int, expected_status: TrialStatus, expected_attempt: int,
                   new: Trial) -> bool:
        """Replace the record iff its current status and attempt are the expected ones.

        Returns:
            True if applied; False if the record changed meanwhile (or does not exist).
        Raises:
            ValueError: ``new.id`` differs from ``trial_id``; or the swap would apply but
                ``new`` changes ``generation`` or ``parent_id`` (the generation and children
                indexes are written once, at creation, so such a change would leave them
                stale). Nothing is written then.
        """

    @abstractmethod
    def ids_with_status(self, status: TrialStatus) -> list[int]:
        """Ids in ascending order. O(matching ids), never a scan of all trials."""

    @abstractmethod
    def first_with_status(self, status: TrialStatus) -> int | None:
        """The smallest id with ``status`` (the FIFO head of the queue), or None."""

    @abstractmethod
    def count(self, status: TrialStatus | None = None) -> int:
        """Number of trials (with ``status``). O(1)."""

    def running_leased_to(self, worker: str) -> list[int]:
        """RUNNING trials whose lease ``worker`` holds, ascending. A store may answer from an
        index (the LMDB writer does); this default reads every RUNNING record."""
        return [trial_id for trial_id in self.ids_with_status(TrialStatus.RUNNING)
                if (lease := self.get_trial(trial_id).lease) is not None and lease.worker == worker]

    def count_uninitiated(self) -> int:
        """``len(uninitiated())``; a store may answer without listing them (LMDB: O(1))."""
        return len(self.uninitiated())

    @abstractmethod
    def followers(self, initiator: int) -> list[int]:
        """COMPLETED trials whose ``origin.initiator`` is ``initiator``, ascending (the
        ``FOLLOWED`` index)."""

    @abstractmethod
    def population_tails(self) -> list[int]:
        """The current population (``pbt_actors.storage.population_index``): COMPLETED trials no
        COMPLETED trial names as initiator, ascending. O(population)."""

    @abstractmethod
    def step_totals(self) -> tuple[int, int]:
        """``(leased, queued)`` steps charged to the search (``pbt_actors.model.trial_cost``),
        from the counters the store keeps: O(1)."""

    @abstractmethod
    def best_ranked(self, objective: Objective, limit: int = 1) -> list[int]:
        """Up to ``limit`` ids from the best index (``pbt_actors.storage.best_index``), best first:
        COMPLETED trials with valid metrics by (weighted scalar desc, id asc), for a Pareto
        objective only the non-dominated front (``pbt_actors.model.ranking``). O(log n + limit).

        Raises:
            ValueError: ``objective`` is not the stored experiment's (the index ranks by that
                one), or no experiment is stored yet.
        """

    @abstractmethod
    def children(self, trial_id: int) -> list[int]:
        """Trials that warm-start from ``trial_id``, ascending."""

    @abstractmethod
    def generation(self, generation: int) -> list[int]:
        """Trial ids of one generation, ascending."""

    @abstractmethod
    def completed_in_generation(self, generation: int) -> list[int]:
        """COMPLETED trial ids of one generation, ascending: the opponent pool, read without
        decoding a single record (the policy then reads only the opponent it draws)."""

    @abstractmethod
    def max_generation(self) -> int:
        """The highest generation with a trial, or -1 for an empty store."""

    @abstractmethod
    def uninitiated(self) -> list[int]:
        """COMPLETED trials that have not reproduced yet (``initiated`` is False), ascending."""

    @abstractmethod
    def iter_trials(self, start_id: int = 1) -> Iterator[Trial]:
        """All trials by ascending id (for verify, export and reports, not for decisions)."""

    # --- checkpoint index ---------------------------------------------------------------------
    @abstractmethod
    def checkpoint(self, trial_id: int) -> CheckpointRef | None:
        """The checkpoint a trial produced, if indexed."""

    @abstractmethod
    def delete_checkpoint(self, trial_id: int) -> None:
        """Drop a checkpoint from the index (after garbage collection removed the file)."""

    @abstractmethod
    def checkpoint_ids(self) -> list[int]:
        """Trial ids with an indexed checkpoint, ascending."""

    # --- transactions -------------------------------------------------------------------------
    @abstractmethod
    def batch(self, durable: bool = True) -> AbstractContextManager[None]:
        """Group writes into one atomic commit. Nested batches join the outer one.

        ``durable=False`` allows the store to skip flushing this commit to disk (it still
        commits atomically); the controller uses it for batches that acknowledge no result."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; further calls are errors."""

    # --- conveniences built on the primitives -------------------------------------------------
    def get_trial(self, trial_id: int) -> Trial:
        """The trial.

        Raises:
            TrialNotFound: no such id.
        """
        trial = self.find_trial(trial_id)
        if trial is None:
            raise TrialNotFound(trial_id)
        return trial

    def record_measurement(self, trial_id: int, attempt: int, measurement: Measurement) -> bool:
        """Append an intermediate measurement to a RUNNING trial's current attempt."""
        trial = self.find_trial(trial_id)
        if trial is None or trial.status is not TrialStatus.RUNNING or trial.attempt != attempt:
            return False
        new = trial.evolve(measurements=(*trial.measurements, measurement))
        return self.transition(trial_id, TrialStatus.RUNNING, attempt, new)

    def trials(self, ids: list[int]) -> list[Trial]:
        return [self.get_trial(i) for i in ids]

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_counter(status: TrialStatus) -> str:
    """Name of the per-status counter the stores keep in ``meta``."""
    return f"status:{status.value}"


def _is_index_int(value: object, top: int) -> bool:
    return is_int(value) and 0 <= value <= top


def check_spec(spec: TrialSpec) -> None:
    """Refuse a spec that could not be indexed or read back, before anything is written.

    Generation and parent ids become LMDB keys; hyperparameters must pass the strict reader
    (``hparams_from``) or the stored record would be unreadable forever (e.g. a numpy int).
    Every store checks the same limits, not only LMDB, so that a policy bug fails identically
    in simulation and for real.

    Raises:
        ValueError: the spec breaks one of those limits (a bug in its producer).
    """
    try:
        hparams_from(spec.hparams, "spec.hparams")
    except SchemaError as exc:
        raise ValueError(str(exc)) from None
    if not _is_index_int(spec.generation, MAX_GENERATION):
        raise ValueError(f"generation {spec.generation!r} must be an integer in "
                         f"[0, {MAX_GENERATION}]")
    for what, value in (("parent_id", spec.parent_id), ("crossover_id", spec.crossover_id)):
        if value is not None and not _is_index_int(value, MAX_ID):
            raise ValueError(f"{what} {value!r} must be None or a non-negative trial id")


def check_transition(current: Trial, new: Trial) -> None:
    """Refuse a record that changes what the creation-time indexes were built from."""
    if new.generation != current.generation or new.parent_id != current.parent_id:
        raise ValueError(
            f"trial {current.id}: a transition cannot change generation "
            f"({current.generation} -> {new.generation}) or parent_id "
            f"({current.parent_id} -> {new.parent_id}); create a new trial instead")
