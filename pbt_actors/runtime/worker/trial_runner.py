"""One trial, run the same way everywhere: build the context, call ``train``, classify the end.

Layer 4. Shared by the worker (``runtime/worker/worker_client.py``, which adds the network: heartbeats while
``train`` runs, then delivering the outcome) and the in-process runner
(``tools/inprocess.py``, which hands the outcome straight to ``ControllerCore.handle``), so the
two cannot drift apart on what a failure means.

What ``execute`` returns, i.e. what the controller is told:

* ``train`` raised → ``Fail``, retryable unless the exception is a ``CheckpointError`` (the
  parent's checkpoint cannot be read: no retry of this spec can fix it; the policy picks
  another parent). A checkpoint the store could not write (disk full, bucket deleted), or a
  parent unreadable because the whole root is gone, is the store's fault: ``fault`` =
  ``checkpoint_store`` (``store_fault``), re-queued uncharged while the run stops. Anything
  else says nothing about the trial, so it is retried (up to ``max_attempts``). A ``ctx.report`` of a
  value that is not a number raises ``MetricError`` inside ``train``: the same failure.
* ``train`` called ``sys.exit`` (``SystemExit``, whatever its code) → a retryable ``Fail``
  saying so: user code ending "the process" must not end the worker, which serves the whole
  run. ``KeyboardInterrupt`` alone propagates: in a worker process it is the real interrupt
  of the process (SIGINT, e.g. Ctrl-C on ``pbt-actors run``, which reaches the whole process
  group); graceful preemption is SIGTERM, which sets ``ctx.preempted`` and never raises.
  A ``train`` that raises ``KeyboardInterrupt`` itself is indistinguishable from that, and
  is treated like it: the worker process ends and its trial counts as a death during a trial.
* ``train`` returned, but its metrics are unusable → a retryable ``Fail`` with the reason
  (``TrialContext.final_metrics``): a value that is not a number, or no value for an
  objective metric (returned ``None``/a list/a dict without it, and never ``ctx.report``-ed).
* the process is being preempted (``ctx.preempted``) and the trial did not save a checkpoint
  at its end step → ``Fail(preempted=True)``, with ``resume`` = the checkpoint it saved on the
  way (if past its start step) so the retry continues from there;
* the controller asked the trial to stop (``ctx.stop_event``) → ``None``: nothing to report;
* otherwise → ``Report`` of the final metrics, the measurements and the saved checkpoint; when
  that checkpoint is still being written in the background (``ctx.pending``), a *pending*
  ``Report`` without it (the worker sends the completing one once it is durable,
  ``worker_client``). A write that is done already, or a preempted process, settles it first.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from pbt_actors.model.errors import CheckpointError, CheckpointStoreFault, CheckpointWriteError
from pbt_actors.model.protocol import Fail, Report, TrialAssignment
from pbt_actors.runtime.worker.trial_context import MetricError, NullLink, TrialContext, TrialLink

log = logging.getLogger(__name__)

TrainFn = Callable[[TrialContext], Any]
MAX_ERROR_TEXT = 8000
"""A failure's traceback is cut to its last this many characters."""
PREEMPTED = "preempted (SIGTERM)"
BAD_RESULT = "unusable trial result"


def build_context(spec: TrialAssignment, checkpoint_root: str, device: str = "cpu", *,
                  link: TrialLink | None = None, preempt_event: threading.Event | None = None,
                  stop_event: threading.Event | None = None) -> TrialContext:
    """The ``TrialContext`` a ``train(ctx)`` gets for the assignment ``spec``."""
    return TrialContext(
        trial_id=spec.trial_id, attempt=spec.attempt, generation=spec.generation, hparams=dict(spec.hparams),
        start_step=spec.start_step, end_step=spec.end_step, checkpoint_root=checkpoint_root,
        parent_checkpoint=spec.parent_checkpoint, device=device, experiment=spec.experiment,
        link=link if link is not None else NullLink(),
        stop_event=stop_event if stop_event is not None else threading.Event(),
        preempt_event=preempt_event if preempt_event is not None else threading.Event(),
    )


def is_retryable(exc: BaseException) -> bool:
    """Whether a trial that raised ``exc`` is worth another attempt (see the module docstring)."""
    return not isinstance(exc, CheckpointError)


def store_fault(ctx: TrialContext, exc: BaseException) -> str | None:
    """Why the attempt's end is the checkpoint store's fault, or None when it is the trial's.

    A checkpoint that could not be written (``ctx.store_fault``: disk full, bucket deleted) is
    never the trial's doing. A parent checkpoint that cannot be read (``CheckpointError``) is
    the trial's (a missing or damaged file: another parent is picked) unless the root itself
    cannot be written either (a deleted bucket loses every file at once): probed then.
    """
    if ctx.store_fault is not None:
        return str(ctx.store_fault)
    if isinstance(exc, CheckpointError) and not ctx.replay:
        from pbt_actors.runtime.checkpoint_payloads import check_checkpoint_root

        try:
            check_checkpoint_root(ctx.checkpoint_root)
        except CheckpointStoreFault as fault:
            return str(fault)
    return None


def execute(ctx: TrialContext, train: TrainFn, worker_id: str, *, ask_next: bool = False,
            objective: Sequence[str] = ()) -> Report | Fail | None:
    """Run ``train(ctx)`` and return what to tell the controller (see the module docstring).

    ``ask_next``: set ``Report.next`` (the ack brings the next trial along), unless the process
    is being preempted and will run no other. ``objective``: the metric names a completed
    trial must have (returned or reported); without them, any metric will do.

    Raises:
        KeyboardInterrupt: from ``train``, unchanged.
    """
    try:
        returned = train(ctx)
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        text = f"train called sys.exit({exc.code!r}) (SystemExit): a trial must return or raise, not end the process"
        log.warning("trial %d attempt %d failed: %s", ctx.trial_id, ctx.attempt, text)
        return Fail(worker_id, ctx.trial_id, ctx.attempt, text[:MAX_ERROR_TEXT], True)
    except BaseException as exc:  # the user's code: report it, never die of it
        log.warning("trial %d attempt %d failed: %s", ctx.trial_id, ctx.attempt, exc)
        text = "".join(traceback.format_exception(exc))[-MAX_ERROR_TEXT:]
        fault = store_fault(ctx, exc)
        if fault is not None:
            log.error("trial %d attempt %d: the checkpoint store cannot be written: %s", ctx.trial_id, ctx.attempt,
                      fault)
            text = f"{text}\nCheckpointStoreFault: {fault}"[-MAX_ERROR_TEXT:]
            return Fail(worker_id, ctx.trial_id, ctx.attempt, text, True, fault="checkpoint_store")
        return Fail(worker_id, ctx.trial_id, ctx.attempt, text, is_retryable(exc))
    if ctx.pending is not None and (ctx.preempted or ctx.pending.done):
        try:  # the process is going (or the write is done already): report it durable now
            ctx._settle_pending()
        except CheckpointWriteError as exc:
            log.error("trial %d attempt %d: the checkpoint store cannot be written: %s", ctx.trial_id, ctx.attempt,
                      exc)
            return Fail(worker_id, ctx.trial_id, ctx.attempt, f"CheckpointStoreFault: {exc}"[-MAX_ERROR_TEXT:], True,
                        fault="checkpoint_store")
    if ctx.preempted and (ctx.saved is None or ctx.saved.step < ctx.end_step):
        resume = ctx.saved if ctx.saved is not None and ctx.saved.step > ctx.start_step else None
        return Fail(worker_id, ctx.trial_id, ctx.attempt, PREEMPTED, True, resume, preempted=True)
    if ctx.stop_event.is_set():
        return None
    try:
        final = ctx.final_metrics(returned, objective)
        if not final:
            raise MetricError(f"train returned {returned!r:.80} and no metric was reported with ctx.report")
    except MetricError as exc:
        text = f"{BAD_RESULT}: {exc}"
        log.warning("trial %d attempt %d failed: %s", ctx.trial_id, ctx.attempt, text)
        return Fail(worker_id, ctx.trial_id, ctx.attempt, text[:MAX_ERROR_TEXT], True)
    return Report(worker_id, ctx.trial_id, ctx.attempt, final, tuple(ctx.measurements),
                  ctx.saved, next=ask_next and not ctx.preempted, pending=ctx.pending is not None)
