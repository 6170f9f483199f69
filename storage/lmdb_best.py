"""The best index (``pbt_actors.storage.best_index``) in its two LMDB databases.

Layer 2. The rule of which edits a record write implies is ``BestRule``'s; this module reads and
writes the ordered keys (``best_index.sort_key``) inside the transaction it is handed, and
rebuilds the index when the stored experiment's objective is not the one it was built for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lmdb

from pbt_actors.model import wire
from pbt_actors.model.fitness import Objective
from pbt_actors.model.ranking import BestEntry
from pbt_actors.model.records import Trial
from pbt_actors.storage import schema
from pbt_actors.storage.best_index import FRONT, META_BEST_INDEX, RANKED, BestEdit, BestRule, ranking_by, sort_key

log = logging.getLogger(__name__)


class LmdbBestIndex:
    """``RANKED`` and ``FRONT`` of one store."""

    def __init__(self, dbs: Mapping[bytes, Any]) -> None:
        self._meta = dbs[schema.DB_META]
        self._dbs = {RANKED: dbs[schema.DB_BEST_RANKED], FRONT: dbs[schema.DB_BEST_FRONT]}
        # the rule per stored META_BEST_INDEX bytes, so the rule a write applies is always the
        # one its own transaction records
        self._rules: dict[bytes, BestRule | None] = {}

    def rule(self, txn: lmdb.Transaction) -> BestRule | None:
        """The rule of the index this transaction sees (None: no index kept, no objective)."""
        raw = txn.get(schema.meta_key(META_BEST_INDEX), db=self._meta)
        if raw is None:
            return None
        raw = bytes(raw)
        if raw not in self._rules:
            stored = schema.decode_meta(META_BEST_INDEX, raw)
            objective = stored.get("objective") if isinstance(stored, dict) else None
            self._rules[raw] = BestRule.from_experiment({"objective": objective})
        return self._rules[raw]

    def entries(self, txn: lmdb.Transaction, index: str, limit: int | None = None) -> Iterator[BestEntry]:
        """Entries of ``RANKED`` or ``FRONT``, best first."""
        cursor = txn.cursor(db=self._dbs[index])
        if not cursor.first():
            return
        for n, (key, value) in enumerate(cursor.iternext(keys=True, values=True)):
            if limit is not None and n >= limit:
                return
            scalar, trial_id = schema.decode_best_key(bytes(key))
            yield BestEntry(scalar, trial_id, schema.decode_oriented(trial_id, bytes(value)))

    def ranked(self, txn: lmdb.Transaction, objective: Objective, limit: int) -> list[int]:
        """Up to ``limit`` ids, best first (``TrialStore.best_ranked``).

        Raises:
            ValueError: the index ranks by another objective than ``objective`` (or there is
                no experiment to rank by).
        """
        rule = ranking_by(self.rule(txn), objective)
        return [e.trial_id for e in self.entries(txn, FRONT if rule.pareto else RANKED, limit)]

    def apply(self, txn: lmdb.Transaction, edits: list[BestEdit]) -> None:
        for index, op, entry in edits:
            key = sort_key(entry.scalar, entry.trial_id)
            if op > 0:
                txn.put(key, wire.pack(list(entry.oriented)), db=self._dbs[index])
            else:
                txn.delete(key, db=self._dbs[index])

    def put(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Apply the edits of one completed record's write (same transaction)."""
        rule = self.rule(txn)
        if rule is not None:
            self.apply(txn, rule.edits(old, new, self.entries(txn, FRONT), self.entries(txn, RANKED)))

    def sync(self, txn: lmdb.Transaction, experiment: Any, completed: Callable[[], list[Trial]], where: str) -> None:
        """Make the index describe the stored ``experiment``'s objective: rebuild it from the
        ``completed`` records when it was built for another objective or never built."""
        rule = BestRule.from_experiment(experiment)
        stored_raw = txn.get(schema.meta_key(META_BEST_INDEX), db=self._meta)
        stored = None if stored_raw is None else schema.decode_meta(META_BEST_INDEX, stored_raw)
        if rule is None and stored is None:
            return
        if rule is not None and rule.matches(stored):
            return
        for db in self._dbs.values():
            txn.drop(db, delete=False)
        if rule is None:
            txn.delete(schema.meta_key(META_BEST_INDEX), db=self._meta)
            return
        trials = completed()
        if trials:
            log.info("building the best index of %s over %d completed trials", where, len(trials))
        self.apply(txn, rule.built(trials))
        txn.put(schema.meta_key(META_BEST_INDEX), schema.encode_meta({"objective": rule.fingerprint}), db=self._meta)
