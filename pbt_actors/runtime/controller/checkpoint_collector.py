"""Carrying out checkpoint retention: deleting files off the hot path, then recording it.

Layer 4. ``pbt_actors.control.retention_rules`` decides (pure); this module acts:

* ``Collector`` — a background thread next to the running controller. It wakes when trials
  complete (``nudge``) or every ``interval_s``, asks the controller actor for a plan (a short
  read on the actor's thread), deletes the files on *its own* thread (slow I/O, object-store
  round trips), then asks the actor to record the deletions in one batched commit. Leasing
  never waits for a deletion; a plan computed from an older snapshot stays valid because a
  checkpoint that is no longer needed never becomes needed again.
* ``collect_store`` — the same for a stopped store (``pbt-actors gc``), with ``dry_run``.
* ``local_deleter`` — the default deletion for a local checkpoint folder. A directory
  checkpoint (its uri is its manifest's, ``model.records.is_directory_checkpoint``) is deleted
  whole: the manifest, then its files' folder (derived from the manifest's key, under the same
  trial prefix). Deleters are plain
  ``Callable[[str], bool | None]`` taking a checkpoint uri and idempotent (a missing file is no
  error). They return whether a file was there: a deleter that cannot tell returns None, read as
  deleted. The running collector records an absent file collected (a pass that deleted it may
  have died before recording); ``gc`` does not: deleting a file that is not there is not a
  deletion, and a wrong ``--checkpoint-root`` must not mark the real files collected.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pbt_actors.control.retention_rules import (
    RetentionPlan,
    orphan_directory_checkpoints,
    plan_retention,
    read_pins,
    record_collected,
)
from pbt_actors.model.errors import CheckpointStoreFault, StoreFull, StoreRetry
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import (
    MANIFEST_SUFFIX,
    CheckpointRef,
    TrialStatus,
    directory_files_folder,
    is_directory_checkpoint,
    is_output_log,
    owns_checkpoint,
    trial_checkpoint_prefix,
)
from pbt_actors.runtime.checkpoint_payloads import inside_root
from pbt_actors.storage.dir_manifest import remove_tree
from pbt_actors.storage.trial_store import TrialStore

log = logging.getLogger(__name__)

Deleter = Callable[[str], bool | None]
"""Deletes one checkpoint by its uri; idempotent (deleting what is gone is not an error).
Returns False when no file was there (None: cannot tell, counted as deleted)."""

MAX_STORE_RETRIES = 8


def local_deleter(root: str | Path) -> Deleter:
    """Delete checkpoint files under a local ``root`` (refusing uris that escape it)."""

    def delete(uri: str) -> bool:
        try:
            inside_root(root, uri).unlink()
            present = True
        except FileNotFoundError:
            present = False
        if uri.endswith(MANIFEST_SUFFIX):  # a directory checkpoint: its files go too
            present = remove_tree(inside_root(root, directory_files_folder(uri))) or present
        return present

    return delete


def checkpoint_deleter(root: str | Path) -> Deleter:
    """The deleter for a checkpoint root: ``local_deleter`` for a folder, the storage
    backend's idempotent ``CheckpointStore.delete`` for a URL (``s3://...``)."""
    text = str(root)
    if "://" not in text or text.startswith("file://"):
        return local_deleter(text.removeprefix("file://"))
    from pbt_actors.runtime.checkpoint_payloads import delete_checkpoint, store_for

    store = store_for(text)

    def delete(uri: str) -> bool:
        return delete_checkpoint(store, uri)

    return delete


def uris_of(store: TrialStore, trial_ids: Sequence[int], experiment: str) -> list[tuple[int, str]]:
    """``(trial id, checkpoint uri)`` of each id still in the checkpoint index whose file the
    trial owns (under its own prefix): retention never deletes a file another trial wrote, even
    if a ref to it got into the store (a borrowed ref, an older build's record)."""
    out = []
    for trial_id in trial_ids:
        ref = store.checkpoint(trial_id)
        if ref is None:
            continue
        if owns_checkpoint(experiment, trial_id, ref):
            out.append((trial_id, ref.uri))
        else:
            log.debug("trial %d's checkpoint %r is not under its own prefix: not deleted", trial_id, ref.uri)
    return out


def delete_all(targets: Sequence[tuple[int, str]], delete: Deleter) -> tuple[list[int], list[str], list[int]]:
    """Delete each uri; the ids whose file was deleted, one line per failure (kept for next
    time: a checkpoint is recorded collected only once its file is really gone), and the ids
    whose file was not there to delete."""
    gone: list[int] = []
    errors: list[str] = []
    absent: list[int] = []
    for trial_id, uri in targets:
        try:
            deleted = delete(uri)
        except Exception as exc:  # any backend's error: log, keep the index entry, retry later
            errors.append(f"trial {trial_id}: cannot delete {uri}: {type(exc).__name__}: {exc}")
            continue
        (absent if deleted is False else gone).append(trial_id)
    return gone, errors, absent


def record_with_retries(store: TrialStore, trial_ids: Sequence[int], now: float) -> list[int]:
    """``record_collected`` re-run when the store had to grow its map (``StoreRetry``)."""
    for _ in range(MAX_STORE_RETRIES):
        try:
            return record_collected(store, trial_ids, now)
        except StoreRetry:
            continue
    raise RuntimeError("could not record collected checkpoints after repeated store growth")


@dataclass
class GcResult:
    """What one collection did (or, dry, would do)."""

    plan: RetentionPlan
    targets: list[tuple[int, str]]
    deleted: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    absent: list[tuple[int, str]] = field(default_factory=list)
    """Targets whose file was not at the root: nothing deleted, nothing recorded."""


def collect_store(store: TrialStore, experiment: Experiment, delete: Deleter, *, dry_run: bool = False,
                  now: float | None = None, force: bool = False,
                  size_of: Callable[[CheckpointRef], int] | None = None) -> GcResult:
    """One collection over a store nobody else writes (``pbt-actors gc``).

    ``size_of`` counts a checkpoint's bytes for ``bytes_freed`` (``checkpoint_bytes``: a
    directory checkpoint's manifest and files); by default the ref's own size.

    ``force`` collects even when the experiment has retention disabled (the user asked).
    """
    if force and not experiment.retention.enabled:
        from dataclasses import replace

        experiment = replace(experiment, retention=replace(experiment.retention, enabled=True))
    plan = plan_retention(store, experiment, read_pins(store))
    targets = uris_of(store, plan.delete, experiment.name)
    result = GcResult(plan, targets)
    count = size_of or (lambda ref: ref.bytes)
    sizes = {i: count(ref) for i in plan.delete if (ref := store.checkpoint(i)) is not None}
    if dry_run or not targets:
        result.bytes_freed = sum(sizes.values())
        return result
    gone, result.errors, absent = delete_all(targets, delete)
    result.absent = [(i, uri) for i, uri in targets if i in set(absent)]
    result.deleted = record_with_retries(store, gone, time.time() if now is None else now)
    result.bytes_freed = sum(sizes[i] for i in result.deleted)
    return result


def stale_attempt_files(store: TrialStore, uris: Iterable[str], experiment: str) -> list[tuple[int, str]]:
    """``(trial id, uri)`` of the files under a COMPLETED trial's own prefix that no record
    needs: everything but its final checkpoint (a directory checkpoint's manifest and its files) and
    its attempts' output logs (and everything but the logs once the checkpoint was collected). They are
    the resume checkpoints of its preempted attempts and whatever a lost attempt wrote: the
    record keeps only the last resume ref, and a completed trial never resumes again, so
    retention's plan (which knows only final checkpoints) would leave them for good (issue 21,
    item 3). ``uris``: every file under the checkpoint root (``CheckpointStore.list_uris``)."""
    pattern = re.compile(rf"^{re.escape(experiment or 'exp')}/trial-(\d+)/")
    by_trial: dict[int, list[str]] = {}
    for uri in uris:
        match = pattern.match(uri)
        if match is not None:
            by_trial.setdefault(int(match.group(1)), []).append(uri)
    stale: list[tuple[int, str]] = []
    for trial_id, files in sorted(by_trial.items()):
        trial = store.find_trial(trial_id)
        if trial is None or trial.status is not TrialStatus.COMPLETED:
            continue  # an active trial may resume from its files; a failed one is left to gc --force users
        kept = trial.checkpoint if trial.checkpoint is not None and trial.collected_at is None else None
        kept_folder = (directory_files_folder(kept.uri) + "/"
                       if kept is not None and is_directory_checkpoint(kept) else None)
        stale.extend((trial_id, uri) for uri in files
                     if not (kept is not None and uri == kept.uri)
                     and not (kept_folder is not None and uri.startswith(kept_folder))
                     and not is_output_log(uri))
    return stale


def sweep_stale_attempt_files(store: TrialStore, root: str | Path, experiment: str, delete: Deleter, *,
                              dry_run: bool = False) -> tuple[list[tuple[int, str]], list[str]]:
    """Delete ``stale_attempt_files`` under ``root``: what was (or, dry, would be) deleted and
    one line per failure. Files only, no record changes: safe on a store opened read-only."""
    from pbt_actors.runtime.checkpoint_payloads import store_for

    stale = stale_attempt_files(store, store_for(root).list_uris(), experiment)
    if dry_run or not stale:
        return stale, []
    done: list[tuple[int, str]] = []
    errors: list[str] = []
    for trial_id, uri in stale:
        try:
            delete(uri)
        except Exception as exc:  # any backend's error: said, and the next sweep tries again
            errors.append(f"trial {trial_id}: cannot delete {uri}: {type(exc).__name__}: {exc}")
            continue
        done.append((trial_id, uri))
    return done, errors


class Collector(threading.Thread):
    """The running controller's collector thread (see the module docstring).

    ``plan()`` returns the ``(trial id, uri)`` pairs that may be deleted (asked of the
    controller actor); ``record(ids)`` records them collected (also the actor's job, as the
    only store writer). Both are injected so this thread knows nothing about actors.
    """

    def __init__(self, plan: Callable[[], list[tuple[int, str]]], record: Callable[[list[int]], object],
                 delete: Deleter, interval_s: float = 5.0) -> None:
        super().__init__(name="pbt-retention-collector", daemon=True)
        self._plan_fn = plan
        self._record_fn = record
        self._delete_fn = delete
        self.interval_s = interval_s
        self._wake_event = threading.Event()
        self._halt = threading.Event()
        self._collect_lock = threading.Lock()  # one collection at a time (the loop, or the final pass)
        self.deleted = 0
        """Checkpoints deleted and recorded so far (for logs and tests)."""

    def nudge(self) -> None:
        """Trials completed: collect soon (cheap; called by the bridge after a report batch)."""
        self._wake_event.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._wake_event.wait(self.interval_s)
            self._wake_event.clear()
            if self._halt.is_set():
                return
            self.collect_once()

    def collect_once(self) -> int:
        """Plan, delete, record. Never raises: a failed collection is logged and retried later."""
        with self._collect_lock:
            try:
                targets = self._plan_fn()
                if not targets:
                    return 0
                gone, errors, absent = delete_all(targets, self._delete_fn)
                for line in errors:
                    log.warning("retention: %s", line)
                gone += absent  # already gone (an earlier pass deleted it, then died before recording)
                if gone:
                    self._record_fn(gone)
                self.deleted += len(gone)
                log.debug("retention: collected %d checkpoint(s)", len(gone))
                return len(gone)
            except (StoreFull, CheckpointStoreFault) as exc:
                # the controller stops serving and says so once (exit 75 or 74); a traceback here
                # would only repeat it, and no later collection can commit either
                log.warning("retention: stopped, the controller stopped serving: %s", exc)
                self._halt.set()
                return 0
            except Exception:
                log.exception("retention: a collection failed; the next one retries")
                return 0

    def stop(self, final_pass: bool = True) -> None:
        """Stop the thread; with ``final_pass``, collect once more (a finished run keeps only
        its best and pinned checkpoints)."""
        self._halt.set()
        self._wake_event.set()
        if self.is_alive():
            self.join(timeout=30)
        if final_pass:
            self.collect_once()


def referenced_checkpoints(store: TrialStore) -> set[str]:
    """Every checkpoint uri the store may still hand out: the checkpoint index, every resume
    checkpoint, and each not-collected trial's own checkpoint."""
    uris = {ref.uri for i in store.checkpoint_ids() if (ref := store.checkpoint(i)) is not None}
    for trial in store.iter_trials():
        if trial.resume is not None:
            uris.add(trial.resume.uri)
        if trial.checkpoint is not None and trial.collected_at is None:
            uris.add(trial.checkpoint.uri)
    return uris


def sweep_orphan_directories(store: TrialStore, experiment: Experiment, root: str, *,
                             dry_run: bool = False) -> tuple[list[str], list[str]]:
    """``pbt-actors gc``'s sweep of directory checkpoints nothing references (files of a
    writer that died before its manifest, other attempts' folders, deletions cut short) and,
    under a local root, of staging leftovers (``staging_leftovers``):
    only under the prefix of a *finished* trial of this store (a running trial's attempt may
    still report its manifest), so another run's files sharing the root are never touched.
    Returns the manifest uris swept (or, dry, that would be) and one line per failure."""
    from pbt_actors.runtime.checkpoint_payloads import delete_checkpoint, store_for

    checkpoints = store_for(root)
    referenced = referenced_checkpoints(store)
    base = f"{experiment.name or 'exp'}/trial-"

    def sweepable(uri: str) -> bool:
        digits = uri[len(base):].split("/", 1)[0] if uri.startswith(base) else ""
        if not digits.isdigit():
            return False
        trial = store.find_trial(int(digits))
        return (trial is not None and trial.status.terminal
                and uri.startswith(trial_checkpoint_prefix(experiment.name, trial.id)))

    orphans = orphan_directory_checkpoints(checkpoints.list_uris(), referenced, sweepable)
    orphans += staging_leftovers(checkpoints.local_path(experiment.name or "exp"), sweepable, root)
    errors: list[str] = []
    if not dry_run:
        for uri in orphans:
            try:
                if uri.endswith(STAGING_SUFFIX):
                    remove_tree(inside_root(root, uri))
                else:
                    delete_checkpoint(checkpoints, uri)
            except Exception as exc:  # any backend's error: reported, the next gc tries again
                errors.append(f"cannot delete unreferenced directory checkpoint {uri}: {type(exc).__name__}: {exc}")
    return orphans, errors


STAGING_SUFFIX = ".staging"


def staging_leftovers(experiment_folder: Path | None, sweepable: Callable[[str], bool], root: str) -> list[str]:
    """A local root's hidden staging files and folders (``.<name>.<...>.staging``) that a writer
    killed mid-copy left under a finished trial's folder, as uris relative to ``root``; none
    for a URL root (an object store has no staging: an unfinished upload is invisible)."""
    if experiment_folder is None or not experiment_folder.is_dir():
        return []
    base = Path(root).resolve()
    found = []
    for trial_folder in sorted(experiment_folder.glob("trial-*")):
        for entry in sorted(trial_folder.glob(".*" + STAGING_SUFFIX)):
            uri = entry.relative_to(base).as_posix()
            if sweepable(uri):
                found.append(uri)
    return found


def checkpoint_bytes(root: str) -> Callable[[CheckpointRef], int]:
    """``size_of`` for ``collect_store``: a file's size, or a directory checkpoint's manifest
    plus every file it lists (read from the store; the ref's size alone when unreadable)."""
    from pbt_actors.runtime.checkpoint_payloads import read_manifest
    from pbt_actors.storage.dir_manifest import total_bytes

    def size(ref: CheckpointRef) -> int:
        if not is_directory_checkpoint(ref):
            return ref.bytes
        try:
            return ref.bytes + total_bytes(read_manifest(root, ref))
        except Exception:  # missing or damaged: counted as what the ref says
            return ref.bytes

    return size
