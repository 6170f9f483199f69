"""Training replay: re-run a trial's hyperparameter schedule from scratch, in one process.

Layer 5 (a face). The paper's last step: once PBT has found a schedule, train once more
following it, typically on train + validation data ("simply apply the previously obtained
schedule"), or only a part of it, e.g. for ensembles.

``replay(schedule, train, checkpoint_root=...)`` calls the user's own ``train(ctx)`` once per
segment, exactly as a worker would: ``ctx.hparams`` are the segment's, ``[ctx.start_step,
ctx.end_step)`` its step range, ``ctx.load_checkpoint()`` returns what the previous segment
saved (None for the first segment from scratch). ``ctx.replay`` is True, so an experiment file
can pick a different data split (pass ``replay_data=False`` to train on exactly the search's
data, e.g. to check that a replay reproduces the original result). Nothing talks to a
controller: progress goes to a ``NullLink``, which never asks to stop.

Where ``train`` is deterministic given its checkpoint and hyperparameters, a replay reproduces
the original trial bit for bit: the chain of segments is the chain of warm starts, and the
crossover sources (which only contributed hyperparameters) need no training of their own.

Sub-ranges: ``from_step=A`` starts from the checkpoint the original run stored at step A (a
segment boundary; the file is read from ``source_checkpoint_root`` and verified by sha256),
``to_step=B`` stops at B (anywhere after A; the last segment is cut short).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_actors.common.atomic_files import write_atomically
from pbt_actors.model.errors import ReplayError
from pbt_actors.model.records import CheckpointRef, Measurement, directory_files_folder, is_directory_checkpoint
from pbt_actors.runtime.checkpoint_payloads import (
    inside_root,
    load_checkpoint,
    load_checkpoint_dir,
    read_verified,
    store_for,
)
from pbt_actors.runtime.worker.trial_context import NullLink, TrialContext
from pbt_actors.tools.lineage import Schedule, Segment


@dataclass(frozen=True)
class PlannedSegment:
    """One call of ``train``: ``segment``'s hyperparameters over ``[start_step, end_step)``
    (the segment's own range, or part of it at the ends of a sub-range)."""

    segment: Segment
    start_step: int
    end_step: int

    @property
    def complete(self) -> bool:
        """Runs the whole original segment (so its result is comparable to the original's)."""
        return (self.start_step, self.end_step) == (self.segment.start_step, self.segment.end_step)


@dataclass(frozen=True)
class SegmentResult:
    planned: PlannedSegment
    final: Mapping[str, float]
    measurements: tuple[Measurement, ...]
    checkpoint: CheckpointRef | None
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        seg = self.planned.segment
        return {
            "trial_id": seg.trial_id, "start_step": self.planned.start_step, "end_step": self.planned.end_step,
            "hparams": dict(seg.hparams), "final": dict(self.final),
            "original_final": dict(seg.final) if seg.final is not None and self.planned.complete else None,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "wall_s": round(self.wall_s, 6),
        }


@dataclass(frozen=True)
class ReplayResult:
    schedule: Schedule
    from_step: int
    to_step: int
    segments: tuple[SegmentResult, ...]
    checkpoint_root: str
    replay_data: bool

    @property
    def final(self) -> Mapping[str, float]:
        """The last segment's metrics (what ``train`` returned, else its last report)."""
        return self.segments[-1].final if self.segments else {}

    @property
    def checkpoint(self) -> CheckpointRef | None:
        """The last segment's saved state, under ``checkpoint_root``."""
        return self.segments[-1].checkpoint if self.segments else None

    def load_state(self) -> Any:
        """The final saved state (verified), e.g. to evaluate or export the replayed model; for
        a directory checkpoint, its verified local folder (``Path``)."""
        if self.checkpoint is None:
            raise ReplayError("the last segment saved no checkpoint")
        if is_directory_checkpoint(self.checkpoint):
            return load_checkpoint_dir(self.checkpoint_root, self.checkpoint)
        return load_checkpoint(self.checkpoint_root, self.checkpoint)

    @property
    def state_path(self) -> Path | None:
        """Where the final state lies: the file, or a directory checkpoint's folder."""
        if self.checkpoint is None:
            return None
        uri = self.checkpoint.uri
        return Path(self.checkpoint_root) / (directory_files_folder(uri) if is_directory_checkpoint(self.checkpoint)
                                             else uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.schedule.trial_id, "experiment": self.schedule.experiment,
            "from_step": self.from_step, "to_step": self.to_step, "replay_data": self.replay_data,
            "checkpoint_root": self.checkpoint_root,
            "final": dict(self.final),
            "original_final": (dict(self.schedule.final) if self.schedule.final is not None
                               and self.to_step == self.schedule.end_step else None),
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "segments": [s.to_dict() for s in self.segments],
        }


def plan(schedule: Schedule, from_step: int | None = None, to_step: int | None = None) -> list[PlannedSegment]:
    """The ``train`` calls a replay of ``[from_step, to_step)`` makes.

    Raises:
        ReplayError: ``from_step`` is not a segment boundary (only there does a stored
            checkpoint exist), or ``to_step`` is not after it and inside the schedule.
    """
    start = schedule.start_step if from_step is None else from_step
    end = schedule.end_step if to_step is None else to_step
    starts = [s.start_step for s in schedule.segments]
    if start not in starts:
        raise ReplayError(f"--from-step {start} is not a segment boundary of trial {schedule.trial_id}'s schedule; "
                          f"a replay can start at one of {starts}")
    if not start < end <= schedule.end_step:
        raise ReplayError(f"--to-step {end} must be after the start ({start}) and at most the schedule's end "
                          f"({schedule.end_step})")
    out = []
    for seg in schedule.segments:
        if seg.end_step <= start or seg.start_step >= end:
            continue
        out.append(PlannedSegment(seg, max(seg.start_step, start), min(seg.end_step, end)))
    return out


def start_checkpoint(schedule: Schedule, from_step: int) -> CheckpointRef | None:
    """The stored checkpoint a replay starting at ``from_step`` warm-starts from: the one the
    segment ending at ``from_step`` saved (None when ``from_step`` is the schedule's start)."""
    if from_step == schedule.start_step:
        return None
    for seg in schedule.segments:
        if seg.end_step == from_step:
            if seg.checkpoint is None:
                raise ReplayError(f"trial {seg.trial_id} (ending at step {from_step}) has no stored checkpoint "
                                  f"to start a replay from")
            if seg.collected:
                raise ReplayError(f"trial {seg.trial_id}'s checkpoint (step {from_step}) was collected by retention: "
                                  f"replay from the schedule's start instead (no --from-step), or keep such "
                                  f"checkpoints (`pbt-actors pin`, Retention(keep_lineage=True))")
            return seg.checkpoint
    raise ReplayError(f"no segment ends at step {from_step}")


def replay(schedule: Schedule, train: Callable[[TrialContext], Any], *,
           checkpoint_root: str | os.PathLike[str] | None = None,
           from_step: int | None = None, to_step: int | None = None,
           source_checkpoint_root: str | os.PathLike[str] | None = None,
           replay_data: bool = True, device: str = "cpu",
           on_segment: Callable[[SegmentResult], None] | None = None) -> ReplayResult:
    """Run ``train`` through the schedule's segments in this process, from scratch (or from
    the stored checkpoint at ``from_step``).

    Args:
        checkpoint_root: where the replay's own checkpoints go (a fresh temporary folder when
            None; it is then kept, so ``ReplayResult.load_state`` works). Files are named
            ``<experiment>-replay/trial-<id>/a1-s<step>-<sha16>.ckpt`` so they never collide with the
            search's files, even in the same folder.
        from_step, to_step: replay only ``[from_step, to_step)`` (see ``plan``).
        source_checkpoint_root: the search's checkpoint folder or URL, needed when ``from_step`` is
            after the schedule's start.
        replay_data: the value of ``ctx.replay``; True lets the experiment file train on its
            replay data (e.g. train + validation).
        on_segment: called after each segment (progress output).
    Raises:
        ReplayError: bad range, missing start checkpoint, a segment that raised or saved no
            checkpoint for the next one.
        CheckpointError: the start checkpoint fails its sha256.
    """
    planned = plan(schedule, from_step, to_step)
    first, last = planned[0].start_step, planned[-1].end_step
    root = Path(checkpoint_root) if checkpoint_root is not None else Path(tempfile.mkdtemp(prefix="pbt-replay-"))
    root.mkdir(parents=True, exist_ok=True)
    parent = start_checkpoint(schedule, first)
    if parent is not None:
        if source_checkpoint_root is None:
            raise ReplayError(f"a replay from step {first} starts from the search's checkpoint {parent.uri}: "
                              f"give the search's checkpoint folder (source_checkpoint_root / --checkpoint-root)")
        _copy_verified(source_checkpoint_root, root, parent)
    name = f"{schedule.experiment or 'exp'}-replay"
    results: list[SegmentResult] = []
    for index, step in enumerate(planned):
        seg = step.segment
        ctx = TrialContext(trial_id=seg.trial_id, attempt=1, generation=seg.generation, hparams=dict(seg.hparams),
                           start_step=step.start_step, end_step=step.end_step, checkpoint_root=str(root),
                           parent_checkpoint=parent, device=device, replay=replay_data, experiment=name,
                           link=NullLink())
        began = time.perf_counter()
        try:
            returned = train(ctx)
        except Exception as exc:
            raise ReplayError(f"train(ctx) raised in the segment of trial {seg.trial_id} "
                              f"(steps {step.start_step}-{step.end_step}): {type(exc).__name__}: {exc}") from exc
        result = SegmentResult(step, ctx.final_metrics(returned), tuple(ctx.measurements), ctx.saved,
                               time.perf_counter() - began)
        results.append(result)
        if on_segment is not None:
            on_segment(result)
        if ctx.saved is None and index + 1 < len(planned):
            raise ReplayError(f"train(ctx) saved no checkpoint in the segment of trial {seg.trial_id}; the next "
                              f"segment has nothing to warm-start from (call ctx.save_checkpoint(state))")
        parent = ctx.saved
    return ReplayResult(schedule, first, last, tuple(results), str(root), replay_data)


def _copy_verified(source_root: str | os.PathLike[str], target_root: Path, ref: CheckpointRef) -> None:
    """Place the search's checkpoint ``ref`` (from a folder or a URL such as ``s3://...``)
    under the replay's local root (same uri), verified; a directory checkpoint's manifest and
    every file of its folder."""
    if is_directory_checkpoint(ref):
        _copy_directory_verified(source_root, target_root, ref)
        return
    data = read_verified(source_root, ref)
    target = inside_root(target_root, ref.uri)
    source = store_for(source_root).local_path(ref.uri)
    if source is not None and target == source.resolve():
        return
    write_atomically(target, bytes(data))
    read_verified(target_root, ref)  # the copy must match the reference too


def _copy_directory_verified(source_root: str | os.PathLike[str], target_root: Path, ref: CheckpointRef) -> None:
    """``_copy_verified`` for a directory checkpoint: the verified folder (fetched once to
    this host's cache for a URL) copied next to its manifest, then verified at the target."""
    import shutil

    manifest = read_verified(source_root, ref)
    folder = load_checkpoint_dir(source_root, ref)
    target_manifest = inside_root(target_root, ref.uri)
    target_folder = inside_root(target_root, directory_files_folder(ref.uri))
    if target_folder == folder.resolve():
        return  # the replay writes into the search's own root
    if not target_folder.exists():
        shutil.copytree(folder, target_folder)
    write_atomically(target_manifest, bytes(manifest))
    load_checkpoint_dir(target_root, ref)  # the copy must match the reference too
