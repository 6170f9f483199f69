"""The derived-index rules, written once: old record → new record → the index edits, as data.

Layer 2, pure (imports only the data model). Every store keeps indexes derived from the trial
records (``TrialStore``'s contract: "derived indexes are the store's job"). They used to be
written out three times: ``InMemoryTrialStore._write``, ``LmdbTrialStore._put_trial`` and the
LMDB writer's in-memory ``IndexMirror``, each saying it followed "the same rules" as another.
Now ``index_edits`` is the only place that says which index entries a record implies; the
stores only *apply* edits to their own structures:

* ``InMemoryTrialStore``: dicts of sets (with its undo log);
* ``LmdbTrialStore``: puts and deletes of the keys ``pbt_actors.storage.schema.INDEX_LAYOUT``
  assigns to each index (the on-disk format is unchanged by this module);
* ``IndexMirror``: the LMDB writer's cached copy of the indexes it answers from memory.

A new index is one rule here, plus its key layout in ``schema.INDEX_LAYOUT`` if it lives on
disk, plus the query that reads it.

The rule, for the *set* indexes: each index holds, per record, a set of ``(key, trial id)``
entries that is a pure function of that record (a RUNNING trial leased to ``w1`` is entry
``("w1", id)`` of ``LEASE``); a write adds what the new record implies and the old one did not,
and removes the converse. Two consequences the stores rely on:

* an unchanged entry costs nothing (a heartbeat that only renews a lease edits no index, where
  the old code deleted and re-put the uninitiated key on every write);
* applying the same ``(old, new)`` edits twice leaves the same sets (adds and removes are
  idempotent), so an op replayed after LMDB map growth is safe. Counters are not idempotent and
  are derived from ``STATUS`` edits by the stores under their own transaction rules.

The one *map* index, ``CHECKPOINT``, is put whenever a record brings a checkpoint it did not have
before, and never removed by a record change: garbage collection removes entries explicitly
(``TrialStore.delete_checkpoint``) once the file is gone, and a later write of the same record
must not bring it back.

Representation, chosen for the LMDB writer's hot path (one call per transition): an edit is a
plain 4-tuple ``(index, op, key, item)`` with ``index`` one of the string constants below (module
singletons, so stores can compare with ``is``), ``op`` ``ADD`` (+1) or ``REMOVE`` (-1) (also the
delta of the status counter), and a list of them per write. No classes are built per call.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from pbt_actors.model.records import Trial, TrialStatus

# --- the indexes --------------------------------------------------------------------------------
STATUS: Final = "status"
"""key: the status, item: the id. Also drives the per-status counters (``status_counter``)."""
GENERATION: Final = "generation"
"""key: the generation, item: the id. Written at creation (a transition cannot change it)."""
CHILDREN: Final = "children"
"""key: the parent id, item: the child's id. Written at creation; only trials with a parent."""
COMPLETED: Final = "completed"
"""key: the generation, item: the id of a COMPLETED trial (the opponent pools)."""
UNINITIATED: Final = "uninitiated"
"""key: None (one set), item: the id of a COMPLETED trial that has not reproduced yet."""
FOLLOWED: Final = "followed"
"""key: an initiator's id, item: the id of a COMPLETED trial whose ``origin.initiator`` it is (the
current population, ``pbt_actors.storage.population_index``, is the COMPLETED trials not followed)."""
LEASE: Final = "lease"
"""key: the worker holding the lease, item: the id of a RUNNING trial. Not stored on disk: the
LMDB writer keeps it in memory only, readers elsewhere scan the RUNNING records."""
CHECKPOINT: Final = "checkpoint"
"""The map index: key: the id, item: its ``CheckpointRef``; only ever ``ADD`` (a put)."""

SET_INDEXES: Final = (STATUS, GENERATION, CHILDREN, COMPLETED, UNINITIATED, LEASE, FOLLOWED)

ADD: Final = 1
REMOVE: Final = -1

Edit: TypeAlias = tuple[str, int, Any, Any]
"""``(index, op, key, item)``; see the module docstring."""

_RUNNING = TrialStatus.RUNNING
_COMPLETED = TrialStatus.COMPLETED


def index_edits(old: Trial | None, new: Trial) -> list[Edit]:
    """The index edits that writing ``new`` over ``old`` (None: a new trial) implies.

    Pure: reads the two records only. Callers have already refused a transition that changes
    ``generation`` or ``parent_id`` (``check_transition``), so creation-time entries are never
    moved. Each block below is "entries(new) minus entries(old)" and the converse for one
    index, written out rather than computed with sets because this runs on every write.
    """
    trial_id = new.id
    status = new.status
    edits: list[Edit] = []
    if old is None:
        old_status = old_holder = old_checkpoint = old_follows = None
        was_waiting = False
        edits.append((GENERATION, ADD, new.generation, trial_id))
        if new.parent_id is not None:
            edits.append((CHILDREN, ADD, new.parent_id, trial_id))
    else:
        old_status = old.status
        was_waiting = old_status is _COMPLETED and not old.initiated
        old_lease = old.lease
        old_holder = old_lease.worker if old_lease is not None and old_status is _RUNNING else None
        old_checkpoint = old.checkpoint
        old_follows = old.origin.initiator if old_status is _COMPLETED else None
    # status, and completed-per-generation (the generation is the same in old and new)
    if old_status is not status:
        if old_status is not None:
            edits.append((STATUS, REMOVE, old_status, trial_id))
            if old_status is _COMPLETED:
                edits.append((COMPLETED, REMOVE, new.generation, trial_id))
        edits.append((STATUS, ADD, status, trial_id))
        if status is _COMPLETED:
            edits.append((COMPLETED, ADD, new.generation, trial_id))
    # uninitiated: COMPLETED and not reproduced yet
    waiting = status is _COMPLETED and not new.initiated
    if was_waiting is not waiting:
        edits.append((UNINITIATED, ADD if waiting else REMOVE, None, trial_id))
    # lease: RUNNING with a lease, filed under its holder (a renewal to the same worker: no edit)
    lease = new.lease
    holder = lease.worker if lease is not None and status is _RUNNING else None
    if old_holder != holder:
        if old_holder is not None:
            edits.append((LEASE, REMOVE, old_holder, trial_id))
        if holder is not None:
            edits.append((LEASE, ADD, holder, trial_id))
    # followed: a COMPLETED trial with an initiator, filed under it
    follows = new.origin.initiator if status is _COMPLETED else None
    if old_follows != follows:
        if old_follows is not None:
            edits.append((FOLLOWED, REMOVE, old_follows, trial_id))
        if follows is not None:
            edits.append((FOLLOWED, ADD, follows, trial_id))
    # checkpoint: put when the record brings a new one; never removed by a record change
    checkpoint = new.checkpoint
    if checkpoint is not old_checkpoint and checkpoint is not None and checkpoint != old_checkpoint:
        edits.append((CHECKPOINT, ADD, trial_id, checkpoint))
    return edits


def entries(trial: Trial) -> list[Edit]:
    """Every index entry ``trial`` implies, as ``ADD`` edits: what a store built from scratch
    holds for it. ``verify`` compares a store's indexes with these, and the LMDB writer builds
    its lease mirror from them."""
    return index_edits(None, trial)
