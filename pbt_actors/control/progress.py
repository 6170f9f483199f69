"""Where a run stands, decided once: is it finished, and which trial is best.

Layer 3, pure reads over the ``TrialStore`` interface (no policy, no core, no clock), so every
face may import it: the controller (``ControllerCore.finished``), ``pbt-actors status``
(``store_summary``), ``verify``, ``report`` and the fault-test harness. Each used to spell the
rule out itself, and the copies had begun to differ (one ignored trials waiting to reproduce,
one ignored an empty store).

The rule (docs/design.md §6.7: "the experiment ends when nothing is pending or running and no lineage can
continue"): a run is finished once the controller has recorded its end (``META_FINISHED_AT``),
or when it holds trials, none of them PENDING or RUNNING, and no COMPLETED trial still waits to
reproduce (an uninitiated initiator may yet spawn a child, so the run is not over).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_FINISHED_AT, TrialStore

if TYPE_CHECKING:  # only its objective is used: importing it (numpy) is the caller's business
    from pbt_actors.model.experiment import Experiment


class RunFacts(Protocol):
    """What the finished decision reads. Attributes, so a store-backed reader can fetch each
    lazily and ``finished`` short-circuits (the controller asks on every ``request_trial``)."""

    @property
    def ended(self) -> bool:
        """The controller recorded the end of the run."""

    @property
    def active(self) -> int:
        """PENDING + RUNNING trials."""

    @property
    def waiting(self) -> int:
        """COMPLETED trials that have not reproduced yet."""

    @property
    def total(self) -> int:
        """All trials."""


class Counts(NamedTuple):
    """``RunFacts`` as plain numbers: for callers that counted the records themselves
    (``verify`` and ``report`` read every record anyway) and for tests."""

    ended: bool
    active: int
    waiting: int
    total: int

    @classmethod
    def of(cls, store: TrialStore, trials: Iterable[Trial]) -> Counts:
        """The facts counted over ``trials`` (records the caller has read anyway); ``ended`` is
        read from ``store``."""
        active = waiting = total = 0
        for trial in trials:
            total += 1
            active += trial.status.active
            waiting += trial.status is TrialStatus.COMPLETED and not trial.initiated
        return cls(run_ended(store), active, waiting, total)

    @classmethod
    def read(cls, store: TrialStore) -> Counts:
        """The facts from the store's counters and index sizes: O(1), no record decoded."""
        facts = StoreFacts(store)
        return cls(facts.ended, facts.active, facts.waiting, facts.total)


class StoreFacts:
    """``RunFacts`` read from a store's O(1) indexes, each only when the rule asks for it."""

    __slots__ = ("_store",)

    def __init__(self, store: TrialStore) -> None:
        self._store = store

    @property
    def ended(self) -> bool:
        return run_ended(self._store)

    @property
    def active(self) -> int:
        store = self._store
        return store.count(TrialStatus.PENDING) + store.count(TrialStatus.RUNNING)

    @property
    def waiting(self) -> int:
        return self._store.count_uninitiated()

    @property
    def total(self) -> int:
        return self._store.count()


def run_ended(store: TrialStore) -> bool:
    """The controller recorded the end of the run in ``store`` (``META_FINISHED_AT``)."""
    return store.get_meta(META_FINISHED_AT) is not None


def finished(facts: RunFacts) -> bool:
    """THE finished rule (see the module docstring); reads ``facts`` left to right, lazily."""
    return facts.ended or (facts.active == 0 and facts.waiting == 0 and facts.total > 0)


def run_finished(store: TrialStore) -> bool:
    """Is the run in ``store`` finished? O(1) reads plus the (short) uninitiated list."""
    return finished(StoreFacts(store))


def best_completed(store: TrialStore, experiment: Experiment) -> Trial | None:
    """The best COMPLETED trial of a store by the objective (``pbt_actors.model.ranking``).

    O(log n) from the store's best index: its first entry, or, when no completed trial has
    valid metrics, the oldest COMPLETED trial."""
    ranked = store.best_ranked(experiment.objective_, 1)
    if ranked:
        return store.get_trial(ranked[0])
    oldest = store.first_with_status(TrialStatus.COMPLETED)
    return None if oldest is None else store.get_trial(oldest)


def top_completed(store: TrialStore, experiment: Experiment, k: int) -> list[Trial]:
    """Up to ``k`` best COMPLETED trials, best first (``status --watch``'s table), from the index:
    for a weighted objective every valid trial in rank order; for a Pareto objective only the
    non-dominated front (it ranks the dominated by how many dominate them, which an index cannot
    keep cheaply). With no valid trial, the oldest COMPLETED ones."""
    ranked = store.best_ranked(experiment.objective_, k)
    if not ranked:
        ranked = store.ids_with_status(TrialStatus.COMPLETED)[:k]
    return store.trials(ranked)
