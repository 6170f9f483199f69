"""``WorkerActor``: the worker's connection to the controller, and what it knows of the run.

Layer 4. A pykka actor that owns the worker's DEALER socket (ZeroMQ sockets stay on one
thread), the run this worker joined, whether the controller called it stale, and the trial
that is running; every network send happens on its thread. The worker's other threads call
it through its proxy: the trial loop's ``request`` (an ask: it waits for the reply),
``begin_trial``/``end_trial`` (tells), and the heartbeat ticker's ``heartbeat`` (an ask whose
future the ticker keeps, so that it sends no other while one is unfinished: a silent
controller costs each heartbeat its timeout, and unbounded tells would pile up).

Two things are shared without messages, each written by one thread only, so without locks:

* ``LatestReport``: ``ctx.report`` (the trial thread) replaces the latest metrics, the next
  heartbeat takes them. A message per report would wake this actor's thread, and take the GIL
  from training, at every report, while only the latest one is ever sent;
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
from dataclasses import dataclass, replace
from typing import Any

import pykka

from pbt_actors.common.exit_codes import EXIT_TRIAL_TIMEOUT
from pbt_actors.control.deadlines import TIMEOUT_ERROR
from pbt_actors.model.errors import MessageTooLarge, RequestTimeout
from pbt_actors.model.protocol import Ack, Error, Heartbeat, Hello, Message, RequestTrial, Stop
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.transport.endpoints import WorkerEndpoint

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 2.0
TIMEOUT_GRACE_S = 5.0
"""After a trial timeout, how long ``train`` has to return before the process ends itself."""


def stamp_run(message: Message, run: str) -> Message:
    """``message`` carrying the run id ``run`` (requests have a ``run`` field; "" leaves it)."""
    if run and getattr(message, "run", None) == "":
        return replace(message, run=run)  # type: ignore[arg-type]
    return message


class LatestReport:
    """The running trial's ``TrialLink``: its latest ``ctx.report``, for the next heartbeat.

    The trial thread replaces ``latest`` whole (one reference, written by that thread only);
    the heartbeat reads it and sends its metrics if it is not the one it sent last."""

    def __init__(self, start_step: int) -> None:
        self.latest: tuple[int, dict[str, float] | None] = (start_step, None)

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.latest = (step, dict(metrics))
        return True  # a stop comes through ``ctx.stop_event``, which the heartbeat sets


class SilenceClock:
    """Since when the controller has been silent (``WorkerClient.controller_timeout_s``).

    Two fields, one writer each: the actor stamps ``heard_at`` on every reply, the trial loop
    moves ``quiet_until`` past a pause that a reply asked for (that pause is not silence)."""

    def __init__(self) -> None:
        self.heard_at = time.monotonic()
        self.quiet_until = 0.0

    def heard(self) -> None:
        self.heard_at = time.monotonic()

    def pause(self, seconds: float) -> None:
        self.quiet_until = time.monotonic() + seconds

    def silent_since(self) -> float:
        return max(self.heard_at, self.quiet_until)


@dataclass
class _RunningTrial:
    ctx: TrialContext
    link: LatestReport
    sent: tuple[int, dict[str, float] | None] | None = None
    """The report the last heartbeat carried (``link.latest`` when it was taken)."""


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

    def request(self, message: Message, timeout_s: float = 5.0, retries: int | None = None) -> Message:
        """One round (``WorkerEndpoint.request``) for ``message``, stamped with the run id.

        A stale worker (the controller said ``wrong_run``) gets that answer for a
        ``request_trial`` without asking: it must not take the new run's work."""
        assert self.endpoint is not None
        if self.wrong_run and isinstance(message, RequestTrial):
            return Error("wrong_run", self.wrong_run)
        reply = self.endpoint.request(stamp_run(message, self.run), timeout_s=timeout_s, retries=retries)
        self._clock.heard()
        if isinstance(message, Hello) and isinstance(reply, Ack) and reply.run:
            self.run = reply.run
        elif isinstance(reply, Error) and reply.code == "wrong_run":
            self.wrong_run = reply.message
        return reply

    def begin_trial(self, ctx: TrialContext, link: LatestReport) -> None:
        self.trial = _RunningTrial(ctx, link)

    def end_trial(self) -> None:
        self.trial = None

    def heartbeat(self) -> None:
        """Send one heartbeat for the running trial (asked by the ticker; never raises)."""
        trial = self.trial
        if trial is None or self.endpoint is None:
            return
        ctx, latest = trial.ctx, trial.link.latest
        step, metrics = latest
        payload = dict(metrics) if latest is not trial.sent and metrics else None
        trial.sent = latest
        message = Heartbeat(self.worker_id, ctx.trial_id, ctx.attempt, step, payload, self.run)
        try:
            try:
                reply = self.endpoint.request(message, timeout_s=HEARTBEAT_TIMEOUT_S, retries=0)
            except MessageTooLarge as exc:  # metrics too many to fit: renew the lease without them
                log.warning("trial %d: heartbeat metrics dropped: %s", ctx.trial_id, exc)
                reply = self.endpoint.request(replace(message, metrics=None), timeout_s=HEARTBEAT_TIMEOUT_S,
                                              retries=0)
        except RequestTimeout:
            log.info("heartbeat for trial %d unanswered; training on", ctx.trial_id)
            return
        self._clock.heard()
        if isinstance(reply, Error) and reply.code == "wrong_run":
            log.error("controller refuses this worker: %s", reply.message)
            self.wrong_run = reply.message
            ctx.stop_event.set()
        elif isinstance(reply, Stop):
            log.info("controller stops trial %d: %s", ctx.trial_id, reply.reason)
            ctx.stop_event.set()
            if TIMEOUT_ERROR in reply.reason:
                self._end_if_stuck_later(ctx, reply.reason)

    def end_if_stuck(self, ctx: TrialContext, reason: str) -> None:
        """``ctx``'s trial timed out ``TIMEOUT_GRACE_S`` ago: end the process if it still runs."""
        if self.trial is not None and self.trial.ctx is ctx:
            log.error("trial %d attempt %d is stuck after its timeout (%s); ending this worker process",
                      ctx.trial_id, ctx.attempt, reason)
            os._exit(EXIT_TRIAL_TIMEOUT)

    def _end_if_stuck_later(self, ctx: TrialContext, reason: str) -> None:
        """The trial timed out (the controller already counted the attempt as failed). ``train``
        may still notice ``ctx.should_stop`` and return; if it is still running the same
        attempt ``TIMEOUT_GRACE_S`` later, it is stuck (maybe in C code, which no thread can
        interrupt): the process ends with ``EXIT_TRIAL_TIMEOUT`` and its supervisor restarts
        it without counting that against the host."""
        assert self._self is not None
        timer = threading.Timer(TIMEOUT_GRACE_S, _tell, args=(self._self.end_if_stuck.defer, ctx, reason))
        timer.daemon = True
        timer.start()
