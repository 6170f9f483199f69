"""``CommandTrial``: any program as a trial, behind the ordinary ``train(ctx)`` interface.

Layer 4. An experiment with ``command=[...]`` (a Python experiment file, or a TOML one that
needs no Python) gets a ``CommandTrial`` as its ``train``; everything around it (leases,
heartbeats, preemption, retries, resume, replay, retention, object storage) is the Python
path's, unchanged. Per attempt it:

1. fetches the parent's checkpoint directory (``ctx.load_checkpoint_dir()``: verified by
   sha256, cached per host; none from scratch) and makes an empty directory for this
   attempt's checkpoint, a TensorBoard directory and the hyperparameters as a JSON file;
2. starts the program in its own process group (``process.ProgramGroup``) with the
   placeholders of its arguments filled in and the ``PBT_*`` environment
   (``pbt_actors.model.command_line``), in the experiment file's folder;
3. turns each metric line on its stdout (``pbt_actors.model.metric_lines``), and each scalar
   it writes as a TensorBoard event file into its TensorBoard directory
   (``tensorboard_scalars``), into ``ctx.report``; when that asks to stop, or the worker is
   preempted, the group gets SIGTERM and, ``grace_s`` later, SIGKILL;
4. decides: exit 0 with the objective reported and a checkpoint directory with content is a
   completed attempt (the directory is stored at the trial's end step); a preempted program
   that said ``pbt: checkpoint step=N`` (N past the start) leaves the directory as the resume
   checkpoint at N; anything else raises ``CommandError``, whose text holds the exit status
   and the last lines of stderr (a failed attempt, retried up to ``max_attempts``);
5. keeps the tail of stdout and stderr as the attempt's log (``output_log``).

Trial timeouts need nothing here: the controller's ``stop`` sets ``ctx.stop_event``, which
ends the group like any stop (well within the worker's own ``TIMEOUT_GRACE_S``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pbt_actors.model.command_line import AttemptFacts, AttemptPaths, environment, expand, shell_words, values
from pbt_actors.model.errors import CheckpointError
from pbt_actors.model.metric_lines import CheckpointLine, MetricLine, MetricLineError, parse_line
from pbt_actors.model.records import CheckpointRef
from pbt_actors.runtime.command.output_log import format_output, save_output
from pbt_actors.runtime.command.process import EndOfOutput, Line, ProgramGroup
from pbt_actors.runtime.command.tensorboard_scalars import POLL_S, TensorboardScalars

log = logging.getLogger(__name__)

GRACE_S = 3.0
"""Seconds between the SIGTERM and the SIGKILL of a stopped program: time to save a resume
checkpoint, yet within the host supervisor's own grace for its workers (5 s by default)."""
STDERR_LINES = 20
"""Lines of stderr an attempt's error carries."""
MAX_CHECKPOINT_FILES = 1000
"""A checkpoint directory holding more files is refused (each file is one put and one fetch
per trial, on every host: sharded checkpoints have a few hundred at most)."""
DRAIN_S = 5.0
"""After the program ended: how long its remaining stdout lines may take to be read."""


class CommandError(RuntimeError):
    """The program's attempt failed: it could not start, exited non-zero, broke the protocol
    or left no usable result. The message says which, with the end of its stderr."""


class CommandContext(Protocol):
    """What a ``CommandTrial`` uses of ``TrialContext`` (kept structural: this package sits
    below the worker's modules, which import the experiment loader that imports it)."""

    trial_id: int
    attempt: int
    generation: int
    hparams: Mapping[str, Any]
    start_step: int
    end_step: int
    replay: bool
    experiment: str
    checkpoint_root: str

    @property
    def should_stop(self) -> bool: ...

    @property
    def preempted(self) -> bool: ...

    def report(self, step: int, **metrics: float) -> bool: ...

    def load_checkpoint_dir(self) -> Path | None: ...

    def save_checkpoint_dir(self, path: str | os.PathLike[str], step: int | None = None) -> CheckpointRef: ...


class CommandTrial:
    """A ``train(ctx)`` that runs ``command`` (see the module docstring).

    Args:
        command: the program and its arguments, placeholders unfilled (checked already by
            ``Experiment``).
        cwd: where the program runs (the experiment file's folder).
        objective: metric names a completed attempt must have reported.
        grace_s: SIGTERM-to-SIGKILL time of a stopped program.
    """

    def __init__(self, command: Sequence[str], *, cwd: str | os.PathLike[str] = ".", objective: Sequence[str] = (),
                 grace_s: float = GRACE_S, max_checkpoint_files: int = MAX_CHECKPOINT_FILES) -> None:
        self.command = tuple(command)
        self.cwd = str(Path(cwd).resolve())
        self.objective = tuple(objective)
        self.grace_s = grace_s
        self.max_checkpoint_files = max_checkpoint_files

    def __repr__(self) -> str:
        return f"CommandTrial({shell_words(self.command)!r})"

    def __call__(self, ctx: CommandContext) -> dict[str, float]:
        work = Path(tempfile.mkdtemp(prefix=f"pbt-cmd-t{ctx.trial_id}-a{ctx.attempt}-"))
        try:
            return self._attempt(ctx, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _attempt(self, ctx: CommandContext, work: Path) -> dict[str, float]:
        parent = ctx.load_checkpoint_dir()
        paths = AttemptPaths(checkpoint_dir=str(work / "checkpoint"),
                             parent_dir=None if parent is None else str(parent),
                             hparams_file=str(work / "hparams.json"), tensorboard_dir=str(work / "tensorboard"))
        for folder in (paths.checkpoint_dir, paths.tensorboard_dir):
            os.mkdir(folder)
        Path(paths.hparams_file).write_text(json.dumps(dict(ctx.hparams), sort_keys=True))
        facts = AttemptFacts(ctx.trial_id, ctx.attempt, ctx.generation, ctx.start_step, ctx.end_step,
                             dict(ctx.hparams), bool(ctx.replay), ctx.experiment)
        argv = expand(self.command, values(facts, paths, sys.executable))
        env = {**os.environ, **environment(facts, paths)}
        if parent is None:
            env.pop("PBT_PARENT_DIR", None)  # an inherited one would lie
        try:
            group = ProgramGroup(argv, env=env, cwd=self.cwd)
        except OSError as exc:
            raise CommandError(f"cannot start the command {shell_words(argv)}: {exc.strerror or exc} "
                               f"(in {self.cwd})") from None
        run = _Run(ctx, group, TensorboardScalars(paths.tensorboard_dir))
        try:
            run.follow(self.grace_s)
        finally:
            group.close()
            status = group.process.returncode
            header = (f"trial {ctx.trial_id} attempt {ctx.attempt}: {shell_words(argv)}\n"
                      f"{_status_text(status)}, {time.monotonic() - group.started:.1f} s")
            save_output(ctx.checkpoint_root, ctx.experiment, ctx.trial_id, ctx.attempt,
                        format_output(group.stdout_tail.text(), group.stderr_tail.text(), header))
        return self._outcome(ctx, run, Path(paths.checkpoint_dir))

    def _outcome(self, ctx: CommandContext, run: _Run, out: Path) -> dict[str, float]:
        status = run.group.process.returncode
        if run.line_error is not None:
            raise self._error(run, f"broke the metric line format: {run.line_error}")
        if run.stopped:
            if ctx.preempted and run.reached is not None and ctx.start_step < run.reached < ctx.end_step \
                    and any(out.iterdir()):
                self._store(ctx, run, out, run.reached)  # the retry resumes here
            return dict(run.latest)
        if status != 0:
            raise self._error(run, f"exited with {_status_text(status)}")
        missing = [name for name in self.objective if name not in run.latest]
        if missing:
            raise self._error(run, f"exited 0 without reporting the objective metric {', '.join(map(repr, missing))} "
                              f"(print `pbt: step=N {missing[0]}=VALUE` on stdout)")
        if not any(out.iterdir()):
            raise self._error(run, "exited 0 but wrote no checkpoint into its checkpoint directory "
                              "({checkpoint_dir} / $PBT_CHECKPOINT_DIR)")
        self._store(ctx, run, out, ctx.end_step)
        return dict(run.latest)

    def _store(self, ctx: CommandContext, run: _Run, out: Path, step: int) -> None:
        """``out`` as the trial's checkpoint at ``step``. What the directory store refuses (a
        symbolic link out of it, a FIFO: ``storage.dir_manifest``) is this program's failure,
        said with its stderr; a store that cannot write stays the store's fault."""
        if too_many_files(out, self.max_checkpoint_files):
            raise self._error(run, f"wrote more than {self.max_checkpoint_files} files into its checkpoint "
                              "directory (each is one upload and one download per trial): pack them (tar, "
                              "safetensors shards) into fewer")
        try:
            ctx.save_checkpoint_dir(out, step)
        except CheckpointError as exc:
            raise self._error(run, f"left a checkpoint directory that cannot be stored: {exc}") from exc

    @staticmethod
    def _error(run: _Run, what: str) -> CommandError:
        stderr = run.group.stderr_tail.last_lines(STDERR_LINES)
        text = f"command {shell_words(run.group.argv)} {what}"
        return CommandError(f"{text}\nlast lines of stderr:\n{stderr}" if stderr else f"{text}\n(stderr was empty)")


class _Run:
    """Following one started program: its metric lines into ``ctx.report``, until it ends or
    the trial must stop."""

    def __init__(self, ctx: CommandContext, group: ProgramGroup, tensorboard: TensorboardScalars) -> None:
        self.ctx = ctx
        self.group = group
        self.tensorboard = tensorboard
        self._next_poll = time.monotonic() + POLL_S
        self.latest: dict[str, float] = {}
        self.reached: int | None = None
        self.line_error: str | None = None
        self.stopped = False

    def follow(self, grace_s: float) -> None:
        while not self.ctx.should_stop and self.line_error is None:
            if time.monotonic() >= self._next_poll:
                self._poll_tensorboard()
            item = self.group.read(0.1)
            if isinstance(item, Line):
                self._take(item)
            elif isinstance(item, EndOfOutput) or item is None:
                if self.group.exited() is not None:
                    break
                if isinstance(item, EndOfOutput):  # stdout closed but still running: just wait
                    time.sleep(0.05)
        if self.group.exited() is None:  # asked to stop, or a malformed line: end the group
            self.stopped = self.line_error is None
            self.group.stop(grace_s)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:  # what it printed before it ended (a checkpoint line, say)
            item = self.group.read(max(0.0, deadline - time.monotonic()))
            if not isinstance(item, Line):
                break
            self._take(item)
        self._poll_tensorboard()

    def _poll_tensorboard(self) -> None:
        self._next_poll = time.monotonic() + POLL_S
        for step, metrics in self.tensorboard.poll():
            self._record(step, metrics)

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        self.ctx.report(step, **metrics)  # a False here sets should_stop: ``follow`` ends the group

    def _take(self, line: Line) -> None:
        if line.cut or self.line_error is not None:
            return
        try:
            parsed = parse_line(line.text)
        except MetricLineError as exc:
            self.line_error = f"stdout line {line.number}: {exc}"
            return
        if isinstance(parsed, MetricLine):
            self._record(parsed.step, parsed.metrics)
        elif isinstance(parsed, CheckpointLine):
            self.reached = parsed.step


def too_many_files(root: Path, max_files: int) -> bool:
    """Whether the directory ``root`` holds more than ``max_files`` files (counted lazily)."""
    files = 0
    for _, _, names in os.walk(root):
        files += len(names)
        if files > max_files:
            return True
    return False


def _status_text(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


__all__ = ["GRACE_S", "MAX_CHECKPOINT_FILES", "CommandContext", "CommandError", "CommandTrial", "too_many_files"]
