"""What a trial costs the compute budget, stated once (``docs/design.md`` §6.6).

Layer 1, pure. A trial is charged ``end_step - start_step``: the steps it was created to train.
It counts as *leased* once handed to a worker (``started_at`` is set at the first lease and
never cleared), as *queued* while PENDING and never leased, and as neither otherwise (stopped
before its first lease). Retries of a leased trial are not charged again: charging them would
make the search (which trials exist) depend on machine faults, and equal-budget comparisons
would compare luck. What they re-train is counted apart instead (``retry_charge``), so the
summary says how much retries added on top of the budget (issue 20: "200 leased, 275 trained").

The stores keep the two sums as counters moved by each record write (``charge_deltas``), so
the controller and every face read the totals in O(1); ``step_totals_of`` sums records and is
the oracle ``verify`` and the tests check the counters against.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pbt_actors.model.records import Trial, TrialStatus


class Steps(Protocol):
    """A trial or a trial to be: the step range it trains."""

    @property
    def start_step(self) -> int: ...

    @property
    def end_step(self) -> int: ...


def trial_cost(trial: Steps) -> int:
    """The steps a trial (or spec) is charged: ``end_step - start_step``, never negative."""
    return max(0, trial.end_step - trial.start_step)


def was_leased(trial: Trial) -> bool:
    """The trial has been handed to a worker at least once."""
    return trial.started_at is not None


def charges(trial: Trial | None) -> tuple[int, int]:
    """``(leased, queued)`` steps ``trial`` is charged (``(0, 0)`` for None)."""
    if trial is None:
        return 0, 0
    if was_leased(trial):
        return trial_cost(trial), 0
    if trial.status is TrialStatus.PENDING:
        return 0, trial_cost(trial)
    return 0, 0


def charge_deltas(old: Trial | None, new: Trial) -> tuple[int, int]:
    """How writing ``new`` over ``old`` moves the two totals."""
    (leased_before, queued_before), (leased, queued) = charges(old), charges(new)
    return leased - leased_before, queued - queued_before


def retry_charge(old: Trial | None, new: Trial) -> int:
    """Steps a retry re-leases: a trial leased again (PENDING to RUNNING at attempt 2 or
    later) re-trains its range. An upper bound of the work retries added: an attempt resumed
    from a preemption checkpoint trains only the rest of its range."""
    if old is not None and old.status is TrialStatus.PENDING and new.status is TrialStatus.RUNNING \
            and new.attempt > 1:
        return trial_cost(new)
    return 0


def step_totals_of(trials: Iterable[Trial]) -> tuple[int, int]:
    """``(leased, queued)`` summed over records: the oracle of the stores' counters."""
    leased = queued = 0
    for trial in trials:
        charged = charges(trial)
        leased, queued = leased + charged[0], queued + charged[1]
    return leased, queued
