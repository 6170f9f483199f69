"""Scans that restate what the stores' indexes answer, for the tests to compare them with.

Each reads every record it needs and applies the rule from its own definition (the objective's
``rank_keys``, the records' charges), independently of the index that keeps the answer.
"""

from __future__ import annotations

from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore


def ranked_by_scan(store: TrialStore, experiment: Experiment) -> list[Trial]:
    """Every COMPLETED trial, best first by ``Objective.rank_keys`` (ties: the older id)."""
    completed = store.trials(store.ids_with_status(TrialStatus.COMPLETED))
    keys = experiment.objective_.rank_keys([t.final for t in completed]) if completed else []
    order = sorted(range(len(completed)), key=lambda i: (keys[i], -completed[i].id), reverse=True)
    return [completed[i] for i in order]


def scan_best_completed(store: TrialStore, experiment: Experiment) -> Trial | None:
    """``progress.best_completed`` by decoding every COMPLETED record: O(completed)."""
    ranked = ranked_by_scan(store, experiment)
    return ranked[0] if ranked else None
