"""Which COMPLETED trial is best by an objective: the ranking rule, stated once.

Layer 1, pure. Every face that names a best trial (``status``, the dashboard, ``report``,
``verify``) and the store's best index (``pbt_actors.storage.best_index``) follow this rule:

* A COMPLETED trial competes when its final metrics are *valid* for the objective
  (``Objective.oriented``: none missing, NaN or infinite) and their weighted scalar is a number
  (``inf - inf`` after overflow is not). Its ``BestEntry`` says where it ranks.
* Entries rank best first by ``(weighted scalar desc, id asc)`` (``BestEntry.order``).
* For a Pareto objective only the non-dominated front ranks (``pareto_front``); its member
  with the highest scalar is the one ``Objective.rank_keys`` puts first (weights are positive,
  so a dominating trial has the larger scalar).
* When no COMPLETED trial competes, the best is the oldest COMPLETED trial (what the rank keys
  give when all tie at invalid).

``best_of`` applies the rule to records in memory; the store keeps the same answer as an
index so that reading it costs O(log n).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import Trial, TrialStatus


class BestEntry(NamedTuple):
    """One ranked trial: its weighted scalar, id and oriented metric vector (bigger is better)."""

    scalar: float
    trial_id: int
    oriented: tuple[float, ...]

    @property
    def order(self) -> tuple[float, int]:
        """Sorts best first: higher scalar, then the older id."""
        return (-self.scalar, self.trial_id)


def best_entry(objective: Objective, trial: Trial | None) -> BestEntry | None:
    """Where ``trial`` ranks: None unless COMPLETED with valid metrics and a numeric scalar."""
    if trial is None or trial.status is not TrialStatus.COMPLETED:
        return None
    oriented = objective.oriented(trial.final)
    if oriented is None:
        return None
    scalar = objective.scalar(trial.final)
    if math.isnan(scalar):
        return None
    return BestEntry(scalar, trial.id, oriented)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Pareto dominance of oriented vectors (``Objective.compare``'s rule): ``a`` is at least
    as good everywhere and better somewhere."""
    better = False
    for x, y in zip(a, b, strict=True):
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(entries: Iterable[BestEntry]) -> list[BestEntry]:
    """The non-dominated entries, best first: each entry in turn enters unless a member
    dominates it, and evicts the members it dominates (the index keeps its front the same way)."""
    front: dict[int, BestEntry] = {}
    for entry in entries:
        if any(dominates(m.oriented, entry.oriented) for m in front.values()):
            continue
        for trial_id in [i for i, m in front.items() if dominates(entry.oriented, m.oriented)]:
            del front[trial_id]
        front[entry.trial_id] = entry
    return sorted(front.values(), key=lambda e: e.order)


def ranking(objective: Objective, entries: Iterable[BestEntry]) -> list[BestEntry]:
    """The entries that rank, best first: all of them, or the front of a Pareto objective."""
    if objective.comparison == "pareto":
        return pareto_front(entries)
    return sorted(entries, key=lambda e: e.order)


def best_of(objective: Objective, trials: Iterable[Trial]) -> Trial | None:
    """The best of ``trials`` by the rule above (non-COMPLETED records are ignored)."""
    completed = sorted((t for t in trials if t.status is TrialStatus.COMPLETED), key=lambda t: t.id)
    ranked = ranking(objective, [e for t in completed if (e := best_entry(objective, t)) is not None])
    if ranked:
        return next(t for t in completed if t.id == ranked[0].trial_id)
    return completed[0] if completed else None
