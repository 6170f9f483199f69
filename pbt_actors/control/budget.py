"""The compute budget (``Experiment.budget_steps``): may the search create or lease a trial?

Layer 3, pure. What a trial costs and when it is charged is ``pbt_actors.model.trial_cost``; the
stores keep the two totals (leased, queued) in the transaction of every record write, so the
controller, ``status`` and the tests read the same numbers and a rolled-back batch takes its
charges with it. This module only judges them against the budget (docs/design.md §6.6):

* The controller creates a trial only if ``leased + queued + cost <= budget`` (it skips the
  spawn and retires the initiator otherwise, like ``max_trials``), and leases a never-leased
  trial only if ``leased + cost <= budget`` (a safety net for a budget lowered on resume).
  So ``leased <= budget`` always: the run spends at most its budget, plus
* retries: an attempt that was lost (worker died, preempted, lease expired) or failed is
  re-run under the same trial and is *not* charged again. Charging it would make the search
  (which trials exist) depend on machine faults; equal-budget comparisons would then compare
  luck. Trained steps are therefore ``<= budget + re-run work``; without faults, ``<= budget``.
* A trial stopped early (early stop) is charged in full: the steps were reserved for it.

Retried steps are counted apart (``trial_cost.retry_charge``, the store's ``steps_retried``
counter) and shown next to the leased steps in every summary: ``leased + retried`` bounds what
was trained.
"""

from __future__ import annotations

from typing import NamedTuple

from pbt_actors.storage.trial_store import STEPS_RETRIED, TrialStore


class BudgetLedger(NamedTuple):
    """Leased and queued steps against an optional budget, as a store holds them now.

    ``budget=None``: no budget (everything fits), but the steps are still counted, for the
    progress line.
    """

    budget: int | None
    leased: int = 0
    queued: int = 0
    retried: int = 0

    @classmethod
    def read(cls, store: TrialStore, budget: int | None) -> BudgetLedger:
        """The store's totals (O(1): its counters) against ``budget``."""
        leased, queued = store.step_totals()
        return cls(budget, leased, queued, store.counter(STEPS_RETRIED))

    @property
    def committed(self) -> int:
        return self.leased + self.queued

    def admits_new(self, cost: int) -> bool:
        """May a trial of ``cost`` steps be created?"""
        return self.budget is None or self.committed + cost <= self.budget

    def admits_lease(self, cost: int) -> bool:
        """May a queued (never leased) trial of ``cost`` steps be leased?"""
        return self.budget is None or self.leased + cost <= self.budget

    def spent(self) -> bool:
        """No full trial of any size fits any more (used by faces, not decisions)."""
        return self.budget is not None and self.committed >= self.budget

    @property
    def trained(self) -> int:
        """Steps trained: every leased trial's range plus what retries re-leased (an upper
        bound: an attempt resumed from a preemption checkpoint trains only its rest)."""
        return self.leased + self.retried

    def compute(self, population: int, max_steps: int) -> dict[str, int | None]:
        """JSON-ready steps trained beside ``population x max_steps`` (what a user expects a run
        to cost). Without a budget the first exceeds the second: a child that copies a member
        behind its own lineage re-trains that member's steps from its checkpoint on, and
        retries re-train theirs; ``budget_steps`` caps the leased part (README "Compute")."""
        return {"steps_trained": self.trained, "leased_steps": self.leased, "retried_steps": self.retried,
                "nominal_steps": population * max_steps, "budget_steps": self.budget}

    def summary(self) -> dict[str, int | None]:
        """JSON-ready ``{"budget_steps", "leased_steps", "queued_steps", "retried_steps"}`` for summaries."""
        return {"budget_steps": self.budget, "leased_steps": self.leased, "queued_steps": self.queued,
                "retried_steps": self.retried}
