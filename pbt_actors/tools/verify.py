"""Store invariants: what ``pbt-actors verify`` and the fault tests check after any run.

Layer 5 (reads only). Each check names the trial and the broken promise, so a failing
chaos test says *what* was lost or done twice, not just that something was.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbt_actors.control.progress import Counts
from pbt_actors.control.progress import finished as run_is_finished
from pbt_actors.control.retention_rules import needed_parents
from pbt_actors.model.errors import PbtError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import OriginKind, Trial, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import verify_file
from pbt_actors.storage import indexes
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore

MAX_LISTED = 10  # ids named per index problem; the rest are counted


@dataclass
class VerifyReport:
    trials: int = 0
    checkpoints_checked: int = 0
    checkpoints_collected: int = 0
    """Checkpoints retention deleted (their records say so); not problems, not checked."""
    checkpoints_unchecked: int = 0
    """Completed trials' checkpoints not checked because no checkpoint root was given."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No invariant of the records is broken (checkpoint files: see ``clean``)."""
        return not self.problems

    @property
    def clean(self) -> bool:
        """Nothing broken and nothing left unchecked: what ``pbt-actors verify`` calls clean
        (a store whose checkpoints could not be checked is not, issue 21 item 6)."""
        return self.ok and not self.checkpoints_unchecked

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "clean": self.clean, "trials": self.trials,
                "checkpoints_checked": self.checkpoints_checked,
                "checkpoints_collected": self.checkpoints_collected,
                "checkpoints_unchecked": self.checkpoints_unchecked,
                "problems": list(self.problems)}


def verify_store(store: TrialStore, checkpoint_root: str | Path | None = None, *,
                 finished: bool | None = None) -> VerifyReport:
    """Check every invariant; ``finished=None`` infers it with the run's finished rule
    (``pbt_actors.control.progress.finished``) from the records, except that a COMPLETED trial
    waiting to reproduce does not count as work left: at rest (nothing active) such a trial is
    exactly the stalled initiator logic verify must report, not a sign the run goes on. So:
    nothing active, or the controller recorded the end of the run (then an active trial is an
    orphan, left behind)."""
    report = VerifyReport()
    trials: dict[int, Trial] = {}
    for trial in store.iter_trials():
        trials[trial.id] = trial
    report.trials = len(trials)
    problems = report.problems
    if sorted(trials) != list(range(1, len(trials) + 1)):
        problems.append("trial ids are not dense from 1")
    counts = Counter(t.status for t in trials.values())
    for status in TrialStatus:
        if store.count(status) != counts.get(status, 0):
            problems.append(f"status index says {store.count(status)} {status.value}, records say "
                            f"{counts.get(status, 0)}")
    _check_indexes(store, trials, problems)
    _check_face_indexes(store, trials, problems)
    if finished is None:
        is_finished = run_is_finished(Counts.of(store, trials.values())._replace(waiting=0))
    else:
        is_finished = finished
    initiated_children: Counter[int] = Counter()
    for trial in trials.values():
        tag = f"trial {trial.id}"
        if trial.status is TrialStatus.COMPLETED:
            if trial.final is None or trial.completed_attempt is None:
                problems.append(f"{tag} is COMPLETED without final metrics or completing attempt")
            if is_finished and not trial.initiated:
                problems.append(f"{tag} completed but never reproduced (initiator logic stalled)")
        if is_finished and trial.status is TrialStatus.RUNNING:
            problems.append(f"{tag} is orphaned RUNNING after the run ended")
        if is_finished and trial.status is TrialStatus.PENDING:
            problems.append(f"{tag} was left PENDING after the run ended")
        attempts = [h.attempt for h in trial.history]
        if len(set(attempts)) != len(attempts):
            problems.append(f"{tag} has an attempt on record twice: {attempts}")
        if trial.completed_attempt is not None and not 1 <= trial.completed_attempt <= trial.attempt:
            problems.append(f"{tag} completed by attempt {trial.completed_attempt} of {trial.attempt}")
        if trial.status is TrialStatus.RUNNING and trial.lease is None:
            problems.append(f"{tag} is RUNNING without a lease")
        if trial.parent_id is not None:
            parent = trials.get(trial.parent_id)
            if parent is None:
                problems.append(f"{tag} has unknown parent {trial.parent_id}")
            else:
                if parent.status is not TrialStatus.COMPLETED:
                    problems.append(f"{tag} warm-starts from trial {parent.id} which is {parent.status.value}")
                if trial.start_step != parent.end_step:
                    problems.append(f"{tag} starts at step {trial.start_step}, its parent ended at {parent.end_step}")
                first_start = min((h.started_at for h in trial.history), default=trial.started_at)
                if first_start is not None and parent.ended_at is not None and first_start < parent.ended_at:
                    problems.append(f"{tag} started before its parent {parent.id} completed")
                if trial.created_at < (parent.ended_at or 0.0):
                    problems.append(f"{tag} was created before its parent {parent.id} completed")
        if trial.origin.kind in (OriginKind.TOURNAMENT, OriginKind.TRUNCATION, OriginKind.CONTINUE) \
                and trial.origin.initiator is not None:
            initiated_children[trial.origin.initiator] += 1
        if trial.collected_at is not None:
            report.checkpoints_collected += 1
            if store.checkpoint(trial.id) is not None:
                problems.append(f"{tag}'s checkpoint is recorded collected but still in the checkpoint index")
        elif trial.status is TrialStatus.COMPLETED and trial.checkpoint is not None and checkpoint_root is None:
            report.checkpoints_unchecked += 1
        elif trial.status is TrialStatus.COMPLETED and trial.checkpoint is not None and checkpoint_root is not None:
            report.checkpoints_checked += 1
            problem = verify_file(checkpoint_root, trial.checkpoint)
            if problem is not None:
                problems.append(f"{tag}: {problem}")
    for initiator, count in initiated_children.items():
        if count > 1:
            problems.append(f"trial {initiator} initiated {count} times (must be exactly once)")
    _check_future_parents(store, trials, problems)
    return report


def _check_future_parents(store: TrialStore, trials: dict[int, Trial], problems: list[str]) -> None:
    """No checkpoint that can still be a parent (``control.retention_rules.needed_parents``) may be
    collected or missing from the checkpoint index: a child would train from scratch."""
    raw = store.get_meta(META_EXPERIMENT)
    if raw is None:
        return
    try:
        experiment = Experiment.from_dict(raw)
    except PbtError as exc:
        problems.append(f"the stored experiment definition is unreadable: {exc}")
        return
    held = [trials[i] for i in store.checkpoint_ids() if i in trials]
    needed, _low = needed_parents(store, experiment, held)
    for trial_id in sorted(needed):
        trial = trials.get(trial_id)
        if trial is None or trial.checkpoint is None:
            continue
        if trial.collected_at is not None:
            problems.append(f"trial {trial_id}'s checkpoint was collected, but it can still be a parent "
                            f"({needed[trial_id]})")
        elif store.checkpoint(trial_id) is None:
            problems.append(f"trial {trial_id}'s checkpoint is missing from the checkpoint index, but it can "
                            f"still be a parent ({needed[trial_id]})")


def _ids(ids: set[int]) -> str:
    listed = sorted(ids)
    more = f" and {len(listed) - MAX_LISTED} more" if len(listed) > MAX_LISTED else ""
    return ", ".join(map(str, listed[:MAX_LISTED])) + more


def _check_face_indexes(store: TrialStore, trials: dict[int, Trial], problems: list[str]) -> None:
    """The writer's indexes for the faces (best trial, current population, step totals) agree
    with the records, by the rules of ``pbt_actors.model``. O(n x Pareto front)."""
    from pbt_actors.model.ranking import best_entry, ranking
    from pbt_actors.model.trial_cost import step_totals_of
    from pbt_actors.storage.best_index import BestRule
    from pbt_actors.storage.population_index import tails_of
    from pbt_actors.storage.trial_store import META_EXPERIMENT

    completed = [t for t in trials.values() if t.status is TrialStatus.COMPLETED]
    rule = BestRule.from_experiment(store.get_meta(META_EXPERIMENT))
    if rule is not None:
        held = store.best_ranked(rule.objective, 1)
        entries = [e for t in completed if (e := best_entry(rule.objective, t)) is not None]
        wanted = [e.trial_id for e in ranking(rule.objective, entries)[:1]]
        if held != wanted:
            problems.append(f"best index names {held or 'no trial'}, the records make {wanted or 'no trial'} best")
    tails = store.population_tails()
    if tails != tails_of(completed):
        problems.append(f"population index lists {_ids(set(tails))}, the records make "
                        f"{_ids(set(tails_of(completed)))} the current population")
    totals = store.step_totals()
    wanted_totals = step_totals_of(trials.values())
    if totals != wanted_totals:
        problems.append(f"step counters say {totals[0]} leased / {totals[1]} queued, records say "
                        f"{wanted_totals[0]} / {wanted_totals[1]}")


def _check_indexes(store: TrialStore, trials: dict[int, Trial], problems: list[str]) -> None:
    """Every derived set index holds exactly the entries the records imply, by the stores' own
    rule (``pbt_actors.storage.indexes.entries``), read back through the store's queries.

    The checkpoint index is left out: garbage collection removes entries whose record keeps
    its ``checkpoint``, so a record implies at most, not exactly, its entry."""
    implied: dict[tuple[str, Any], set[int]] = defaultdict(set)
    for trial in trials.values():
        for index, _op, key, item in indexes.entries(trial):
            if index is not indexes.CHECKPOINT:
                implied[index, key].add(item)
    queries: dict[str, Callable[[Any], list[int]]] = {
        indexes.STATUS: store.ids_with_status,
        indexes.GENERATION: store.generation,
        indexes.CHILDREN: store.children,
        indexes.COMPLETED: store.completed_in_generation,
        indexes.UNINITIATED: lambda _key: store.uninitiated(),
        indexes.LEASE: store.running_leased_to,
        indexes.FOLLOWED: store.followers,
    }
    # the records' generations and the store's highest one (a range up to a damaged store's
    # claim could be 2**32 queries long)
    top = max((t.generation for t in trials.values()), default=-1)
    generations = sorted(set(range(top + 1)) | {store.max_generation()} - {-1})
    asked: dict[str, list[Any]] = {  # every key that could hold an entry, not only the implied ones
        indexes.STATUS: list(TrialStatus),
        indexes.GENERATION: list(generations),
        indexes.CHILDREN: sorted(set(trials) | {k for i, k in implied if i is indexes.CHILDREN}),
        indexes.COMPLETED: list(generations),
        indexes.UNINITIATED: [None],
        indexes.FOLLOWED: sorted(set(trials) | {k for i, k in implied if i is indexes.FOLLOWED}),
        # every worker the records name (the interface cannot list the index's keys)
        indexes.LEASE: sorted({k for i, k in implied if i is indexes.LEASE}
                              | {t.worker for t in trials.values() if t.worker is not None}
                              | {h.worker for t in trials.values() for h in t.history}),
    }
    for index in indexes.SET_INDEXES:
        for key in asked[index]:
            held, wanted = set(queries[index](key)), implied.get((index, key), set())
            where = index if key is None else f"{index}[{key}]"
            if held - wanted:
                problems.append(f"index {where} lists trial(s) {_ids(held - wanted)} that the records "
                                f"do not put there")
            if wanted - held:
                problems.append(f"index {where} misses trial(s) {_ids(wanted - held)}")
