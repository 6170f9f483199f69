"""``WorkerActor``: the worker's connection to the controller, and what it knows of the run.

Layer 4. A pykka actor that owns the worker's DEALER socket (ZeroMQ sockets stay on one
thread), the run this worker joined, whether the controller called it stale, and the trial
that is running; every network send happens on its thread. The worker's other threads call
it through its proxy: the trial loop's ``request`` (an ask: it waits for the reply), and the
heartbeat ticker's ``heartbeat`` (an ask whose future the ticker keeps, so that it sends no
other while one is unfinished: a silent controller costs each heartbeat its timeout, and
unbounded tells would pile up).

The actor learns which trial runs from the trial loop's own requests, with no message of its
own (one would wake this thread, and take the GIL, just as ``train`` starts): the thread that
trains is the one that asks, so a request means its trial has ended, and an assignment in reply
to a request that came with a ``TrialSlot`` is the trial that now runs in that slot.

Two things are shared without messages, each written by one thread only, so without locks:

* ``TrialSlot.latest``: ``ctx.report`` (the trial thread) replaces the latest metrics, the
  next heartbeat takes them. A message per report would wake this actor's thread at every
  report, while only the latest one is ever sent;
* ``SilenceClock``: when the controller was last heard from (stamped here on every reply),
  which the ticker reads to give up on a controller that is gone even while this actor is
  stuck waiting for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pykka
from msgspec.structs import replace

from pbt_actors.common.exit_codes import EXIT_TRIAL_TIMEOUT
from pbt_actors.control.deadlines import TIMEOUT_ERROR
from pbt_actors.model.errors import MessageTooLarge, RequestTimeout
from pbt_actors.model.protocol import (
    Ack,
    Error,
    Fail,
    Heartbeat,
    Hello,
    Message,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
)
from pbt_actors.transport.endpoints import WorkerEndpoint

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 2.0
TIMEOUT_GRACE_S = 5.0
"""After a trial timeout, how long ``train`` has to return before the process ends itself."""


def stamp_run(message: Message, run: str) -> Message:
    """``message`` carrying the run id ``run`` (requests have a ``run`` field; "" leaves it)."""
    if run and getattr(message, "run", None) == "":
        return replace(message, run=run)
    return message


def _about_another_trial(message: Message, trial: _RunningTrial | None) -> bool:
    """Whether ``message`` is the completing report (or failure) of an earlier trial, sent by
    the background writer while ``trial`` trains (docs/design.md §15): it ends nothing running."""
    return (trial is not None and isinstance(message, Report | Fail)
            and message.trial_id != trial.spec.trial_id)


class TrialSlot:
    """What a trial's ``train`` shares with the actor: its ``TrialLink`` and its stop event.

    The trial thread replaces ``latest`` whole (one reference, written by that thread only);
    the heartbeat reads it and sends its metrics if it is not the one it sent last. ``stop``
    is the context's ``stop_event``, which a ``stop`` reply sets."""

    def __init__(self) -> None:
        self.latest: tuple[int, dict[str, float]] | None = None
        self.stop = threading.Event()

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.latest = (step, dict(metrics))
        return True  # a stop comes through ``ctx.stop_event``


class SilenceClock:
    """Since when the controller has been silent (``WorkerClient.controller_timeout_s``).

    Two fields, one writer each: the actor stamps ``heard_at`` on every reply, the trial loop
    moves ``quiet_until`` past a pause that a reply asked for (that pause is not silence)."""

    def __init__(self) -> None:
        self.heard_at = time.monotonic()
        self.quiet_until = 0.0
        self.refused = ""
        """Why the controller's last answer was refused (``WorkerEndpoint.refused_reply``): when
        the worker gives up, it says that the controller answered and what was wrong."""

    def heard(self) -> None:
        self.heard_at = time.monotonic()

    def pause(self, seconds: float) -> None:
        self.quiet_until = time.monotonic() + seconds

    def silent_since(self) -> float:
        return max(self.heard_at, self.quiet_until)


@dataclass(eq=False)
class _RunningTrial:
    spec: TrialAssignment
    slot: TrialSlot
    sent: tuple[int, dict[str, float]] | None = None
    """The report the last heartbeat carried (``slot.latest`` when it was taken)."""


def _tell(deferred: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        deferred(*args)


class WorkerActor(pykka.ThreadingActor):
    """Owns the worker's socket, its run id and its running trial (the module docstring)."""

    def __init__(self, connect: str, worker_id: str, endpoint_options: Mapping[str, Any] | None = None,
                 clock: SilenceClock | None = None) -> None:
        super().__init__()
        self.connect = connect
        self.worker_id = worker_id
        self.endpoint_options = dict(endpoint_options or {})
        self.endpoint: WorkerEndpoint | None = None
        self.run = ""
        """The run id learned from the ``hello`` answer; every request carries it."""
        self.wrong_run = ""
        """Set when the controller answered ``wrong_run`` (its message)."""
        self.trial: _RunningTrial | None = None
        self.writing: dict[int, int] = {}
        """Pending completions (trial id -> attempt: reported, checkpoint still being written);
        with no trial running, the heartbeat keeps the oldest one's lease (docs/design.md §15)."""
        self._clock = clock if clock is not None else SilenceClock()
        self._self: pykka.ActorProxy[WorkerActor] | None = None

    def on_start(self) -> None:
        self._self = self.actor_ref.proxy()
        self.endpoint = WorkerEndpoint(self.connect, self.worker_id, **self.endpoint_options)

    def on_stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("worker actor %s died: %s", self.worker_id, exception_value)
        if self.endpoint is not None:
            self.endpoint.close()

    def request(self, message: Message, timeout_s: float = 5.0, retries: int | None = None,
                slot: TrialSlot | None = None) -> Message:
        """One round (``WorkerEndpoint.request``) for the trial loop, stamped with the run id.

        The trial loop asks only between trials: no trial runs any more. An assignment in
        reply, with a ``slot``, is the trial that runs next, in that slot. A stale worker (the
        controller said ``wrong_run``) gets that answer for a ``request_trial`` without asking:
        it must not take the new run's work."""
        assert self.endpoint is not None
        if not _about_another_trial(message, self.trial):
            self.trial = None
        if self.wrong_run and isinstance(message, RequestTrial):
            return Error("wrong_run", self.wrong_run)
        try:
            reply = self.endpoint.request(stamp_run(message, self.run), timeout_s=timeout_s, retries=retries)
        except RequestTimeout:
            self._clock.refused = self.endpoint.refused_reply or self._clock.refused
            raise
        self._clock.heard()
        self._clock.refused = ""
        if isinstance(reply, TrialAssignment) and slot is not None:
            self.trial = _RunningTrial(reply, slot)
        elif isinstance(message, Hello) and isinstance(reply, Ack) and reply.run:
            self.run = reply.run
        elif isinstance(reply, Error) and reply.code == "wrong_run":
            self.wrong_run = reply.message
        return reply

    def begin_trial(self, spec: TrialAssignment, slot: TrialSlot) -> None:
        """``spec`` runs in ``slot`` now (an assignment that came another way than ``request``)."""
        self.trial = _RunningTrial(spec, slot)

    def end_trial(self) -> None:
        """The trial ended and no request follows at once (it was stopped: nothing to report)."""
        self.trial = None

    def hold_writing(self, trial_id: int, attempt: int) -> None:
        """``trial_id`` is a pending completion of this worker until ``done_writing``."""
        self.writing[trial_id] = attempt

    def done_writing(self, trial_id: int) -> None:
        self.writing.pop(trial_id, None)

    def heartbeat(self) -> None:
        """Send one heartbeat for the running trial (asked by the ticker; never raises). With
        none running, one for the oldest pending completion: its lease must outlive its write
        (while a trial runs, the controller renews both with that trial's heartbeat)."""
        trial = self.trial
        if trial is None and self.writing and self.endpoint is not None:
            trial_id, attempt = next(iter(self.writing.items()))
            with contextlib.suppress(RequestTimeout, MessageTooLarge):
                self.endpoint.request(Heartbeat(self.worker_id, trial_id, attempt, 0, None, self.run),
                                      timeout_s=HEARTBEAT_TIMEOUT_S, retries=0)
                self._clock.heard()
            return
        if trial is None or self.endpoint is None:
            return
        spec, latest = trial.spec, trial.slot.latest
        step, metrics = latest if latest is not None else (spec.start_step, None)
        payload = dict(metrics) if latest is not trial.sent and metrics else None
        trial.sent = latest
        message = Heartbeat(self.worker_id, spec.trial_id, spec.attempt, step, payload, self.run)
        try:
            try:
                reply = self.endpoint.request(message, timeout_s=HEARTBEAT_TIMEOUT_S, retries=0)
            except MessageTooLarge as exc:  # metrics too many to fit: renew the lease without them
                log.warning("trial %d: heartbeat metrics dropped: %s", spec.trial_id, exc)
                reply = self.endpoint.request(replace(message, metrics=None), timeout_s=HEARTBEAT_TIMEOUT_S,
                                              retries=0)
        except RequestTimeout:
            log.info("heartbeat for trial %d unanswered; training on", spec.trial_id)
            return
        self._clock.heard()
        if isinstance(reply, Error) and reply.code == "wrong_run":
            log.error("controller refuses this worker: %s", reply.message)
            self.wrong_run = reply.message
            trial.slot.stop.set()
        elif isinstance(reply, Stop):
            log.info("controller stops trial %d: %s", spec.trial_id, reply.reason)
            trial.slot.stop.set()
            if TIMEOUT_ERROR in reply.reason:
                self._end_if_stuck_later(trial, reply.reason)

    def end_if_stuck(self, trial: _RunningTrial, reason: str) -> None:
        """``trial`` timed out ``TIMEOUT_GRACE_S`` ago: end the process if it still runs."""
        if self.trial is trial:
            log.error("trial %d attempt %d is stuck after its timeout (%s); ending this worker process",
                      trial.spec.trial_id, trial.spec.attempt, reason)
            os._exit(EXIT_TRIAL_TIMEOUT)

    def _end_if_stuck_later(self, trial: _RunningTrial, reason: str) -> None:
        """The trial timed out (the controller already counted the attempt as failed). ``train``
        may still notice ``ctx.should_stop`` and return; if it is still running the same
        attempt ``TIMEOUT_GRACE_S`` later, it is stuck (maybe in C code, which no thread can
        interrupt): the process ends with ``EXIT_TRIAL_TIMEOUT`` and its supervisor restarts
        it without counting that against the host."""
        assert self._self is not None
        timer = threading.Timer(TIMEOUT_GRACE_S, _tell, args=(self._self.end_if_stuck.defer, trial, reason))
        timer.daemon = True
        timer.start()
