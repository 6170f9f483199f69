"""The final population: what PBT users compare, next to the best trial at any step.

Layer 3, pure reads over trial records (no clock, no IO beyond the ``TrialStore`` interface).

"Best" (``progress.best_completed``) is the best COMPLETED trial at any step, which may be an
early trial of a lineage that later got worse or was overtaken; papers and users compare the
population the search ends with. Every trial after generation 0 names its *initiator*
(``Origin.initiator``): the completed trial of the same population slot that spawned it, so
each slot is a chain of initiators. The final population is the latest COMPLETED trial of each
slot: a completed trial that no other completed trial names as its initiator. At the end of a
run these are the slots' last trials (at ``max_steps``, or wherever ``max_trials`` or the step
budget cut them); while a run goes on, the current population. Seeds that failed and were
replaced hand their slot to the stand-in, which is a new chain head, so it is counted too.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbt_actors.model.fields import is_number
from pbt_actors.model.ranking import best_of
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore

if TYPE_CHECKING:  # only its objective is used: importing it (numpy) is the caller's business
    from pbt_actors.model.experiment import Experiment


@dataclass(frozen=True)
class FinalPopulation:
    """The latest completed trial of each population slot, its best member and mean metrics."""

    trials: tuple[Trial, ...]
    best: Trial | None
    mean: dict[str, float]
    at_max_steps: int
    max_steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``status --json``, ``run --json``, the report)."""
        best = self.best
        return {
            "size": len(self.trials),
            "trial_ids": [t.id for t in self.trials],
            "at_max_steps": self.at_max_steps,
            "max_steps": self.max_steps,
            "best": None if best is None else {
                "trial_id": best.id, "generation": best.generation, "end_step": best.end_step,
                "final": dict(best.final or {}), "hparams": dict(best.hparams),
            },
            "mean": dict(self.mean),
        }


def population_tails(completed: Iterable[Trial]) -> list[Trial]:
    """The completed trials no other completed trial names as its initiator, by id."""
    trials = [t for t in completed if t.status is TrialStatus.COMPLETED]
    initiators = {t.origin.initiator for t in trials if t.origin.initiator is not None}
    return sorted((t for t in trials if t.id not in initiators), key=lambda t: t.id)


def final_population(completed: Iterable[Trial], experiment: Experiment) -> FinalPopulation:
    """The final (or current) population among ``completed`` (non-completed records are
    ignored), its best by ``experiment``'s objective (``pbt_actors.model.ranking``, as ``best_completed``)."""
    tails = population_tails(completed)
    best = best_of(experiment.objective_, tails)
    mean: dict[str, float] = {}
    for name in experiment.objective_.names:
        values = [float(v) for t in tails if is_number(v := (t.final or {}).get(name)) and math.isfinite(v)]
        if values:
            mean[name] = statistics.fmean(values)
    at_max = sum(1 for t in tails if t.end_step >= experiment.max_steps)
    return FinalPopulation(tuple(tails), best, mean, at_max, experiment.max_steps)


def read_final_population(store: TrialStore, experiment: Experiment) -> FinalPopulation:
    """``final_population`` of a store, from its population index (``TrialStore.population_tails``,
    kept by the writer): O(population)."""
    return final_population(store.trials(store.population_tails()), experiment)
