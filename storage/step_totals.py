"""Steps charged to the search, as two counters the writer keeps: leased and queued.

Layer 2, pure. ``status`` shows the compute budget's use (``control.budget``: a trial costs
``end_step - start_step``; *leased* once handed to a worker, ``started_at`` set; *queued* while
PENDING and never leased). Summing that over every record cost ``status`` a decode of the whole
store (10 s at 100k trials), so the writer keeps the sums as counters, moved by each record
write's difference, in the record's transaction. ``control.budget.BudgetLedger.of`` stays the
definition; the contract tests compare the counters with it.
"""

from __future__ import annotations

from typing import Final

from pbt_actors.model.records import Trial, TrialStatus

LEASED: Final = "steps_leased"
QUEUED: Final = "steps_queued"
META_STEP_TOTALS: Final = "step_totals"
"""Meta marker: the counters are kept (a store written before them gets them at the writer's
first open; readers of a store without the marker sum the records instead)."""


def charges(trial: Trial | None) -> tuple[int, int]:
    """``(leased, queued)`` steps ``trial`` is charged (``(0, 0)`` for None)."""
    if trial is None:
        return 0, 0
    cost = max(0, trial.end_step - trial.start_step)
    if trial.started_at is not None:
        return cost, 0
    if trial.status is TrialStatus.PENDING:
        return 0, cost
    return 0, 0


def deltas(old: Trial | None, new: Trial) -> tuple[int, int]:
    """How writing ``new`` over ``old`` moves the two counters."""
    (leased_before, queued_before), (leased, queued) = charges(old), charges(new)
    return leased - leased_before, queued - queued_before
