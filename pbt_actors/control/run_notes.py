"""What a run's summary must explain besides its numbers: retried attempts, members short of
``max_steps``, and ties for "best".

Layer 3, pure reads over trial records and the ``TrialStore`` interface (no clock, no IO
beyond it), so every face (``status``, ``run``'s summary, the dashboard) says the same thing.

* **Failed attempts** are not failed trials. A trial whose attempt crashed (or whose worker was
  lost) is re-queued as ``attempt + 1`` (``docs/protocol.md`` §4) and usually completes; only
  past ``max_attempts``/``max_losses`` does the trial itself FAIL. A run can therefore have
  dozens of crashed attempts and "failed 0". The store keeps each trial's attempt count, its
  losses (attempts lost to the machine) and its *last* error text (``Trial.error``, kept after a
  retry completes), not every attempt's: so we count every retried attempt and show each
  trial's last traceback.
* **Short of max_steps**: the final population is each slot's latest completed trial
  (``control.final_population``). A slot ends early when its next trial failed or was stopped,
  when ``max_trials`` or the step budget ran out, or when the policy retired it: most often it
  lost its last tournament to a member already at ``max_steps``, whose weights cannot train
  further (``Policy.child_or_retire``), so the lineage ends where it is.
* **Ties**: the best is the highest weighted objective, the oldest trial among equals
  (``model.ranking``); with a saturated metric (accuracy 1.0) many trials tie.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import STEPS_RETRIED, TrialStore

if TYPE_CHECKING:  # only its objective and limits are read: importing it is the caller's business
    from pbt_actors.model.experiment import Experiment

ERROR_LINES = 40
"""A traceback is kept to its last this many lines in summaries (the store keeps 4 kB of it)."""


@dataclass(frozen=True)
class RetriedTrial:
    """A trial with at least one attempt that ended without a result and was retried."""

    trial_id: int
    status: TrialStatus
    attempts: int
    retried: int
    lost: int
    worker: str | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "status": self.status.value, "attempts": self.attempts,
                "retried": self.retried, "lost": self.lost, "crashed": self.retried - self.lost,
                "worker": self.worker, "error": self.error}


@dataclass(frozen=True)
class AttemptFailures:
    """Retried attempts over a whole run, apart from failed trials (see the module doc)."""

    retried: int
    lost: int
    failed_trials: int
    trials: tuple[RetriedTrial, ...]

    @property
    def crashed(self) -> int:
        """Retried attempts that failed in the trial's own code (not lost to the machine)."""
        return self.retried - self.lost

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``trials`` holds the ``limit`` latest retried trials (all without one), so a
        summary of a run with thousands of retries stays small."""
        listed = self.trials if limit is None else self.trials[len(self.trials) - limit:] if limit else ()
        return {"retried_attempts": self.retried, "crashed": self.crashed, "lost": self.lost,
                "trials_retried": len(self.trials), "failed_trials": self.failed_trials,
                "trials": [t.to_dict() for t in listed]}


def attempt_failures(trials: Iterable[Trial]) -> AttemptFailures:
    """Count the retried attempts of ``trials``. A FAILED trial's last attempt is the trial's
    own failure (counted in ``failed_trials``), not a retried one."""
    rows: list[RetriedTrial] = []
    failed = 0
    for trial in trials:
        if trial.status is TrialStatus.FAILED:
            failed += 1
        retried = trial.attempt - 1
        if retried <= 0:
            continue
        lost = min(trial.losses, retried)
        rows.append(RetriedTrial(trial.id, trial.status, trial.attempt, retried, lost,
                                 trial.worker or (trial.lease.worker if trial.lease else None),
                                 _tail(trial.error)))
    return AttemptFailures(sum(r.retried for r in rows), sum(r.lost for r in rows), failed, tuple(rows))


def read_attempt_failures(store: TrialStore, scan_below: int = 20_000) -> AttemptFailures:
    """``attempt_failures`` of a whole store: a scan of every record, skipped on a store of
    ``scan_below`` trials or more whose retried-steps counter (``steps_retried``: a retried
    attempt adds its steps when it is leased again) says no attempt was ever retried, so
    ``status`` on a big store without retries stays O(1). A retry not leased again yet is
    counted once it is."""
    if store.count() >= scan_below and store.counter(STEPS_RETRIED) == 0:
        return AttemptFailures(0, 0, store.count(TrialStatus.FAILED), ())
    return attempt_failures(store.iter_trials())


def _tail(error: str | None) -> str | None:
    if not error:
        return None
    return "\n".join(error.strip().splitlines()[-ERROR_LINES:])


def short_of_max_steps(store: TrialStore, experiment: Experiment, members: Iterable[Trial]) -> dict[str, int]:
    """Why each member of the final population ended before ``max_steps``: reason -> count.
    O(members + FAILED + STOPPED trials)."""
    short = [t for t in members if t.end_step < experiment.max_steps]
    if not short:
        return {}
    ended: dict[int, TrialStatus] = {}
    for status in (TrialStatus.FAILED, TrialStatus.STOPPED):
        for trial in store.trials(store.ids_with_status(status)):
            if trial.origin.initiator is not None:
                ended.setdefault(trial.origin.initiator, status)
    capped = experiment.max_trials is not None and store.count() >= experiment.max_trials
    leased, queued = store.step_totals()
    budget_out = experiment.budget_steps is not None and \
        leased + queued + experiment.steps_per_trial > experiment.budget_steps
    reasons: Counter[str] = Counter()
    for trial in short:
        if not trial.initiated:
            reasons["still to reproduce"] += 1
        elif ended.get(trial.id) is TrialStatus.FAILED:
            reasons["next trial failed"] += 1
        elif ended.get(trial.id) is TrialStatus.STOPPED:
            reasons["next trial stopped"] += 1
        elif capped:
            reasons["max_trials reached"] += 1
        elif budget_out:
            reasons["step budget spent"] += 1
        else:
            reasons["retired: lost its last tournament to a member at max_steps"] += 1
    return dict(reasons)


def tied_with(experiment: Experiment, best: Trial | None, others: Iterable[Trial]) -> int:
    """How many of ``others`` (not ``best`` itself) have exactly ``best``'s objective values."""
    if best is None or best.final is None:
        return 0
    names = experiment.objective_.names
    key = tuple(best.final.get(n) for n in names)
    return sum(1 for t in others if t.id != best.id and t.status is TrialStatus.COMPLETED and t.final is not None
               and tuple(t.final.get(n) for n in names) == key)


def best_ties(store: TrialStore, experiment: Experiment, best: Trial | None, limit: int = 100) -> int:
    """Completed trials tied with ``best`` among the ``limit`` best ranked (``limit`` means "at
    least this many"). Equal values rank next to each other in the store's best index, so the
    records are read in that order only until the first one that is not tied: a summary reads
    one record beyond the ties, not ``limit`` (a status refresh stays O(population))."""
    if best is None or best.final is None:
        return 0
    ties = 0
    for trial_id in store.best_ranked(experiment.objective_, limit + 1):
        if trial_id == best.id:
            continue
        if not tied_with(experiment, best, [store.get_trial(trial_id)]):
            break
        ties += 1
    return ties
