"""Checkpoint retention: which held checkpoints no future trial can warm-start from.

Layer 3, pure: a deterministic function of the store's state, the experiment (its policy and
retention settings) and the pins. No clock, no files, no threads; the controller's collector
(``pbt_actors.runtime.controller.checkpoint_collector``) and ``pbt-actors gc`` carry the plan out.

**Which completed trials can still be a parent** (read off ``control/policies`` and
``control/core.py``; every rule below is exact or conservative, never optimistic):

* a parent of a PENDING or RUNNING trial (its lease reads the parent's checkpoint), and the
  initiator of an active trial (a FAILED/STOPPED trial's stand-in is that initiator's
  reproduction again: ``Policy.replace_by``; it may pick the initiator itself as parent);
* a COMPLETED trial that has not reproduced yet (``uninitiated``): every policy may continue
  from it (budget mode's waiting generation is exactly these);
* initiator policy only: a future tournament of an initiator of generation ``g`` draws from
  the completed trials of generations ``[g - W + 1, g]``. Every future trial descends from an
  active or uninitiated trial (or is a stand-in of the same generation), so every future
  initiator has generation ``>= G``, the lowest generation among the active trials, the
  uninitiated ones and the initiators of active trials; and every generation from ``G`` up is
  reached by the lineage at ``G``. So completed trials of generation ``>= G - W + 1`` are kept,
  the rest can never be drawn again;
* truncation: its parents come from the trial itself or the *frontier* (parents of active
  trials), both kept above; random: the trial itself, or a failed child's parent (kept above).

Once a checkpoint is not needed it is never needed again (the sets above only move forward),
so a plan computed from a snapshot stays valid while the run goes on: deleting later is safe.

Also kept: the ``keep_best`` best completed trials among those held (for a weighted objective
that is the best of the whole run, because a trial that left the top ``k`` never returns to
it; for a Pareto objective ranks depend on who is compared, so it is the best among those
held); with ``keep_lineage`` every ancestor of a kept checkpoint (so sub-range replay works
for whatever ends up best: every future trial descends from a kept one); and pinned trials.

**The bound** (``RetentionPlan.bound``, asserted by tests): with population ``P``, window
``W``, ``k = keep_best`` and ``p`` pins, and without ``keep_lineage``,

* initiator: ``held <= k + p + P * (W + spread)``, ``spread = max generation - G`` (0 in a
  run whose lineages advance together; no window term once nothing is active or waiting);
* truncation / random: ``held <= k + p + 2 * P`` (one active or waiting trial per population
  slot, each needing at most its parent and its initiator).

A generation has at most ``P`` completed trials (each completed trial reproduces once, a
stand-in replaces a trial that did not complete), which is where the ``P`` factors come from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fields import is_int
from pbt_actors.model.records import FILES_SUFFIX, MANIFEST_SUFFIX, Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore

META_PINS = "retention_pins"
"""Meta key: the ascending list of pinned trial ids (``pbt-actors pin``); never collected."""

# why a checkpoint is kept (the first reason found wins; shown by ``gc --dry-run --json``)
PARENT = "parent of an active trial"
INITIATOR = "initiator of an active trial"
WAITING = "has not reproduced yet"
WINDOW = "in a future tournament's opponent window"
BEST = "among the best"
LINEAGE = "on a kept trial's lineage"
PINNED = "pinned"


@dataclass(frozen=True)
class RetentionPlan:
    """What retention decided for one state of the store."""

    held: tuple[int, ...]
    """Trials whose checkpoint is held (indexed, not collected), ascending."""
    keep: Mapping[int, str]
    """Held trials that stay, with why."""
    delete: tuple[int, ...]
    """Held trials whose checkpoint may be deleted, ascending."""
    needed: frozenset[int]
    """Every trial (held or not) that can still be a parent; ``verify`` checks these are held."""
    bound: int
    """The most checkpoints that may be held after the deletions (see the module docstring)."""


def read_pins(store: TrialStore) -> frozenset[int]:
    """The pinned trial ids stored in ``meta`` (a damaged entry reads as no pins plus a clear
    error from ``pin``, never a crash of the controller)."""
    raw = store.get_meta(META_PINS)
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(i for i in raw if is_int(i) and i > 0)


def needed_parents(store: TrialStore, experiment: Experiment,
                   held: Iterable[Trial] = ()) -> tuple[dict[int, str], int | None]:
    """Trials that can still be a parent (id -> reason), and the initiator policy's lowest
    window generation (None for other policies or when nothing can reproduce any more).

    ``held`` are the trials with a held checkpoint: the opponent-window rule is applied to
    those (the window of a collected trial is irrelevant: it cannot be kept any more).
    """
    needed: dict[int, str] = {}
    active = store.trials(sorted(store.ids_with_status(TrialStatus.PENDING)
                                 + store.ids_with_status(TrialStatus.RUNNING)))
    waiting = store.trials(store.uninitiated())
    generations: list[int] = []
    for trial in active:
        generations.append(trial.generation)
        if trial.parent_id is not None:
            needed.setdefault(trial.parent_id, PARENT)
        if trial.origin.initiator is not None:
            needed.setdefault(trial.origin.initiator, INITIATOR)
            initiator = store.find_trial(trial.origin.initiator)
            if initiator is not None:
                generations.append(initiator.generation)
    for trial in waiting:
        generations.append(trial.generation)
        needed.setdefault(trial.id, WAITING)
    low: int | None = None
    if experiment.policy == "initiator" and generations:
        low = min(generations) - experiment.opponent_window + 1
        for trial in held:
            if trial.status is TrialStatus.COMPLETED and trial.generation >= low:
                needed.setdefault(trial.id, WINDOW)
    return needed, low


def best_ids(trials: list[Trial], experiment: Experiment, k: int) -> list[int]:
    """The ``k`` best COMPLETED trials of ``trials`` by the objective (ties: the older id)."""
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    if k <= 0 or not completed:
        return []
    keys = experiment.objective_.rank_keys([t.final for t in completed])
    order = sorted(range(len(completed)), key=lambda i: (keys[i], -completed[i].id), reverse=True)
    return [completed[i].id for i in order[:k]]


def retention_bound(experiment: Experiment, pins: int, low: int | None, max_generation: int) -> int:
    """The module docstring's bound for the current state (without ``keep_lineage``)."""
    fixed = experiment.retention.keep_best + pins
    population = experiment.population
    if experiment.policy != "initiator":
        return fixed + 2 * population
    if low is None:
        return fixed
    lowest = low + experiment.opponent_window - 1  # G
    spread = max(0, max_generation - lowest)
    return fixed + population * (experiment.opponent_window + spread)


def plan_retention(store: TrialStore, experiment: Experiment,
                   pins: Iterable[int] | None = None) -> RetentionPlan:
    """Which held checkpoints may be deleted now. Deterministic; reads the store only.

    O(held + active + waiting) record reads, never a scan of the whole history, so the
    controller can afford it after every few completions. With retention disabled nothing
    is deleted (``delete`` is empty) but ``needed`` is still computed for ``verify``.
    """
    pinned = read_pins(store) if pins is None else frozenset(pins)
    held_ids = store.checkpoint_ids()
    held = store.trials(held_ids)
    needed, low = needed_parents(store, experiment, held)
    keep: dict[int, str] = {i: needed[i] for i in held_ids if i in needed}
    for trial_id in best_ids(held, experiment, experiment.retention.keep_best):
        keep.setdefault(trial_id, BEST)
    for trial_id in held_ids:
        if trial_id in pinned:
            keep.setdefault(trial_id, PINNED)
    if experiment.retention.keep_lineage:
        held_set = set(held_ids)
        for trial_id in list(keep):
            current = store.find_trial(trial_id)
            while current is not None and current.parent_id is not None:
                parent_id = current.parent_id
                if parent_id in held_set:
                    keep.setdefault(parent_id, LINEAGE)
                current = store.find_trial(parent_id)
    delete = tuple(i for i in held_ids if i not in keep) if experiment.retention.enabled else ()
    bound = retention_bound(experiment, len(pinned & set(held_ids)), low, store.max_generation())
    return RetentionPlan(held=tuple(held_ids), keep=keep, delete=delete, needed=frozenset(needed), bound=bound)


def record_collected(store: TrialStore, trial_ids: Iterable[int], now: float) -> list[int]:
    """Record that these trials' checkpoint files are gone: drop each from the checkpoint index
    and stamp ``collected_at`` on its record, in one batch (one commit). Returns the ids
    recorded; ids already collected or unknown are skipped, so a repeated call is harmless.

    Called only after the files were deleted: a crash in between leaves an index entry whose
    file is missing, which the next collection deletes again (deletion is idempotent) and
    ``verify`` reports only if the trial could still be a parent (it cannot: it was planned).
    """
    done: list[int] = []
    with store.batch():
        for trial_id in trial_ids:
            trial = store.find_trial(trial_id)
            if trial is None or store.checkpoint(trial_id) is None:
                continue
            store.delete_checkpoint(trial_id)
            if trial.collected_at is None:
                store.transition(trial_id, trial.status, trial.attempt, trial.evolve(collected_at=now))
            done.append(trial_id)
    return done


def orphan_directory_checkpoints(uris: Iterable[str], referenced: Collection[str],
                                 sweepable: Callable[[str], bool]) -> list[str]:
    """The manifest uris of directory checkpoints that nothing references: a manifest no record
    names, or a files folder (``<name>.files/...``) whose manifest no record names (a writer
    that died before committing its manifest, or a deletion cut short). Only those for which
    ``sweepable(manifest uri)`` holds (``gc``: under a finished trial of this store). Pure;
    ``pbt-actors gc`` deletes each one's manifest and folder (docs/design.md §8.7)."""
    found: set[str] = set()
    marker = FILES_SUFFIX + "/"
    for uri in uris:
        if uri.endswith(MANIFEST_SUFFIX):
            found.add(uri)
        elif marker in uri:
            found.add(uri[:uri.index(marker)] + MANIFEST_SUFFIX)
    return sorted(m for m in found if m not in referenced and sweepable(m))
