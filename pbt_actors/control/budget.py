"""The compute budget (``Experiment.budget_steps``): how many training steps the search spent.

Layer 3, pure: plain arithmetic over trial records, so the controller, ``status`` and the tests
count the same way, and a restarted controller rebuilds the numbers from the stored trials
(no separate counter to keep consistent with them).

The accounting (DESIGN §10 "Compute budget"):

* A trial's cost is ``end_step - start_step``: the steps it was created to train.
* *Leased* steps: the cost of every trial that has been handed to a worker at least once
  (``started_at`` is set at the first lease and never cleared). *Queued* steps: the cost of
  PENDING trials never leased yet.
* The controller creates a trial only if ``leased + queued + cost <= budget`` (it skips the
  spawn and retires the initiator otherwise, like ``max_trials``), and leases a never-leased
  trial only if ``leased + cost <= budget`` (a safety net for a budget lowered on resume).
  So ``leased <= budget`` always: the run spends at most its budget, plus
* retries: an attempt that was lost (worker died, preempted, lease expired) or failed is
  re-run under the same trial and is *not* charged again. Charging it would make the search
  (which trials exist) depend on machine faults; equal-budget comparisons would then compare
  luck. Trained steps are therefore ``<= budget + re-run work``; without faults, ``<= budget``.
* A trial stopped early (early stop) is charged in full: the steps were reserved for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore


def trial_cost(trial: Trial) -> int:
    """The steps a trial is charged: ``end_step - start_step`` (never negative)."""
    return max(0, trial.end_step - trial.start_step)


def was_leased(trial: Trial) -> bool:
    """The trial has been handed to a worker at least once."""
    return trial.started_at is not None


def is_queued(trial: Trial) -> bool:
    """PENDING and never leased: charged as queued, not yet leased."""
    return trial.status is TrialStatus.PENDING and not was_leased(trial)


@dataclass
class BudgetLedger:
    """Leased and queued steps against an optional budget; kept current by the core.

    ``budget=None``: no budget (everything fits), but the steps are still counted, for the
    progress line.
    """

    budget: int | None
    leased: int = 0
    queued: int = 0

    @classmethod
    def of(cls, budget: int | None, trials: Iterable[Trial]) -> BudgetLedger:
        """The ledger of a store's trials (one pass; the core does this once per start)."""
        ledger = cls(budget)
        for trial in trials:
            if was_leased(trial):
                ledger.leased += trial_cost(trial)
            elif is_queued(trial):
                ledger.queued += trial_cost(trial)
        return ledger

    @property
    def committed(self) -> int:
        return self.leased + self.queued

    def admits_new(self, cost: int) -> bool:
        """May a trial of ``cost`` steps be created?"""
        return self.budget is None or self.committed + cost <= self.budget

    def admits_lease(self, cost: int) -> bool:
        """May a queued (never leased) trial of ``cost`` steps be leased?"""
        return self.budget is None or self.leased + cost <= self.budget

    def created(self, cost: int) -> None:
        self.queued += cost

    def leased_first(self, cost: int) -> None:
        """A queued trial was leased for the first time."""
        self.queued -= cost
        self.leased += cost

    def dropped(self, cost: int) -> None:
        """A queued trial was stopped before it was ever leased."""
        self.queued -= cost

    def spent(self) -> bool:
        """No full trial of any size fits any more (used by faces, not decisions)."""
        return self.budget is not None and self.committed >= self.budget


def leased_steps(trials: Iterable[Trial]) -> int:
    """Steps charged to trials leased at least once (what ``status`` shows as spent)."""
    return sum(trial_cost(t) for t in trials if was_leased(t))


def budget_summary(budget: int | None, trials: Iterable[Trial]) -> dict[str, int | None]:
    """JSON-ready ``{"budget_steps", "leased_steps", "queued_steps"}`` for summaries."""
    ledger = BudgetLedger.of(budget, trials)
    return {"budget_steps": budget, "leased_steps": ledger.leased, "queued_steps": ledger.queued}


def read_budget_summary(store: TrialStore, budget: int | None) -> dict[str, int | None]:
    """``budget_summary`` of a store from the writer's step counters (O(1),
    ``pbt_actors.storage.step_totals``), or over its records when it keeps none (older store)."""
    totals = store.step_totals()
    if totals is None:
        return budget_summary(budget, store.iter_trials())
    return {"budget_steps": budget, "leased_steps": totals[0], "queued_steps": totals[1]}
