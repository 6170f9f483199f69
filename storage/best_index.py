"""The best index: which COMPLETED trials are best by the objective, kept by the writer.

Layer 2, pure (imports only the data model). Which trial is best is the rule of
``pbt_actors.model.ranking``; decoding every COMPLETED record to apply it cost ``status`` 7.5 s
at 50k trials, so the writer keeps its answer, in the same transaction as the record, as two
ordered indexes:

* ``RANKED``: every COMPLETED trial whose final metrics are *valid* for the objective, ordered
  best first by ``(weighted scalar desc, id asc)`` (``sort_key``). For a weighted objective the
  best trial is its first entry: one cursor read.
* ``FRONT`` (Pareto objectives only): the non-dominated members of ``RANKED``, in the same
  order. ``Objective.rank_keys`` ranks Pareto members by ``(-number of members dominating it,
  weighted scalar)``, so today's "best" is the front's member with the highest scalar (ties:
  the older id), i.e. the front's first entry.

The front is maintained incrementally: a newly completed trial dominated by a front member
changes nothing (by transitivity it cannot dominate another front member); otherwise it enters
and evicts the members it dominates. Removing a front member (a completed record that changes
or leaves COMPLETED, which the controller never does today but the store contract allows) may
let members it alone dominated re-enter, so that rare case rebuilds the front from ``RANKED``.

Trials whose metrics are invalid (missing, NaN, inf) are in neither index: they lose to every
valid trial, and when no valid one exists the old rule's answer is the oldest COMPLETED trial,
which the status index gives directly (``progress.best_completed``). A valid vector whose
weighted sum is NaN (``inf - inf`` after overflow) is kept out too: ``max`` over NaN keys had no
defined answer before either.

The index is only meaningful for the objective it was built for, so the store records that
objective (``META_BEST_INDEX``), rebuilds the index when the stored experiment's objective
changes, and refuses a query for another objective.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pbt_actors.model.fitness import Objective
from pbt_actors.model.ranking import BestEntry, best_entry, dominates, pareto_front
from pbt_actors.model.records import Trial

META_BEST_INDEX: Final = "best_index"
"""Meta key: ``{"objective": Objective.to_dict()}`` of the objective the index was built for."""

RANKED: Final = "ranked"
FRONT: Final = "front"

_SORT = struct.Struct(">QQ")
_SIGN: Final = 1 << 63
_MASK: Final = (1 << 64) - 1


BestEdit = tuple[str, int, BestEntry]
"""``(RANKED or FRONT, ADD (+1) or REMOVE (-1), entry)``."""


def _float_bits(value: float) -> int:
    """An unsigned integer whose order is the order of ``value`` (IEEE-754 trick)."""
    bits = struct.unpack(">Q", struct.pack(">d", value))[0]
    return (~bits) & _MASK if bits & _SIGN else bits | _SIGN


def _bits_float(bits: int) -> float:
    raw = bits & ~_SIGN if bits & _SIGN else (~bits) & _MASK
    return float(struct.unpack(">d", struct.pack(">Q", raw))[0])


def sort_key(scalar: float, trial_id: int) -> bytes:
    """16 bytes that sort bytewise as ``(scalar desc, id asc)``: the LMDB key of an entry."""
    return _SORT.pack(_float_bits(-scalar + 0.0), trial_id)  # + 0.0: -0.0 and 0.0 are one key


def decode_sort_key(key: bytes | memoryview) -> tuple[float, int]:
    """``(scalar, trial_id)`` back from ``sort_key``."""
    bits, trial_id = _SORT.unpack(key)
    return -_bits_float(bits) + 0.0, int(trial_id)


class BestRule:
    """The index rule for one objective: which entry a record implies, and the edits a write
    implies (``edits``). Built once per objective by the stores."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.pareto = objective.comparison == "pareto"
        self.fingerprint: dict[str, Any] = objective.to_dict()

    @classmethod
    def from_experiment(cls, experiment: Mapping[str, Any] | None) -> BestRule | None:
        """The rule of a stored experiment dict (``META_EXPERIMENT``), or None when there is no
        experiment (yet) or its objective cannot be read (then no index is kept)."""
        if not isinstance(experiment, Mapping) or not isinstance(experiment.get("objective"), Mapping):
            return None
        try:
            return cls(Objective.from_dict(experiment["objective"]))
        except Exception:  # a damaged or foreign experiment: the scan reports it, not the writer
            return None

    def matches(self, stored: Any) -> bool:
        """Was an index described by meta value ``stored`` built by this rule?"""
        return isinstance(stored, Mapping) and stored.get("objective") == self.fingerprint

    def entry(self, trial: Trial | None) -> BestEntry | None:
        """The entry ``trial`` has in ``RANKED`` (``pbt_actors.model.ranking.best_entry``)."""
        return best_entry(self.objective, trial)

    def built(self, completed: Iterable[Trial]) -> list[BestEdit]:
        """The edits that fill an empty index from the ``completed`` records (a new objective,
        or a store migrated to the index)."""
        entries = [e for t in completed if (e := self.entry(t)) is not None]
        out: list[BestEdit] = [(RANKED, 1, e) for e in entries]
        if self.pareto:
            out += [(FRONT, 1, e) for e in pareto_front(entries)]
        return out

    def edits(self, old: Trial | None, new: Trial, front: Iterable[BestEntry],
              ranked: Iterable[BestEntry]) -> list[BestEdit]:
        """The index edits writing ``new`` over ``old`` implies.

        ``front`` and ``ranked`` are the current index contents, iterated only when needed (a
        Pareto completion reads the front; removing a front member reads ``ranked``), so a
        write that does not touch a COMPLETED record costs two attribute checks.
        """
        before, after = self.entry(old), self.entry(new)
        if before == after:
            return []
        out: list[BestEdit] = []
        if before is not None:
            out.append((RANKED, -1, before))
        if after is not None:
            out.append((RANKED, 1, after))
        if not self.pareto:
            return out
        members = list(front)
        if before is not None and any(m.trial_id == before.trial_id for m in members):
            # a front member leaves: rebuild from the ranked entries as they will be
            rest = [e for e in ranked if e.trial_id != before.trial_id]
            if after is not None:
                rest.append(after)
            new_front = {e.trial_id: e for e in pareto_front(rest)}
            old_front = {m.trial_id: m for m in members}
            out += [(FRONT, -1, m) for i, m in old_front.items() if new_front.get(i) != m]
            out += [(FRONT, 1, e) for i, e in new_front.items() if old_front.get(i) != e]
            return out
        if after is not None:
            if any(dominates(m.oriented, after.oriented) for m in members):
                return out
            out += [(FRONT, -1, m) for m in members if dominates(after.oriented, m.oriented)]
            out.append((FRONT, 1, after))
        return out


def ranking_by(rule: BestRule | None, objective: Objective) -> BestRule:
    """The stored index's ``rule``, checked to rank by ``objective`` (what a query asks).

    Raises:
        ValueError: the index ranks by another objective, or by none (no experiment stored).
    """
    if rule is None or rule.fingerprint != objective.to_dict():
        kept = "no objective" if rule is None else f"the objective {rule.fingerprint}"
        raise ValueError(f"the best index ranks by the stored experiment's objective ({kept}), "
                         f"not {objective.to_dict()}")
    return rule
