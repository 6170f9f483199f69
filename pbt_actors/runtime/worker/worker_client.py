"""The worker: request a trial, run the user's ``train(ctx)``, heartbeat, report, repeat.

Layer 4. Two threads per worker process, so that training never waits on the network:

* the **trial thread** (the caller of ``WorkerClient.run``/``run_one``) runs ``train(ctx)``;
* the **``WorkerActor``** (a pykka actor) owns the DEALER socket (ZeroMQ sockets must stay on
  one thread) and sends every message: requests, periodic heartbeats (told by a small ticker
  thread), reports.

Running a trial (context, ``train``, what its end means) is ``pbt_actors.runtime.worker.trial_runner``,
shared with the in-process runner. ``ctx.report`` only updates shared state; the latest metrics ride
on the next heartbeat and a ``stop`` reply sets ``ctx.should_stop``.

Retrying is one loop, ``WorkerClient._send``, with the one backoff (``pbt_actors.common.backoff``):

1. a round is one ``WorkerEndpoint.request``: the same bytes under one request id, resent
   ``RESENDS_PER_ROUND`` times with the endpoint's doubling wait (ZeroMQ may drop a frame);
2. an unanswered round is followed by another under a new id: forever while healthy (the
   controller may be restarting: a worker outlives it with its result intact), and once the
   process is being preempted, for ``PREEMPT_GRACE_S`` more for a report or fail, not at all
   for a request that can simply be dropped (``hello``, ``request_trial``);
3. with a controller timeout (``controller_timeout_s``, ``pbt-actors worker --controller-timeout``)
   each round is cut to fit the time left, and once no reply at all has come for that long
   (counted from the last one, heartbeats included) the worker gives up: ``ControllerGone``
   (the process exits with ``worker_process.EXIT_NO_CONTROLLER``), so that a cluster manager
   can reschedule a job whose controller is gone for good. A running trial is told to stop
   (``ctx.should_stop``) by the ticker thread, which checks the same clock;
4. a report or fail answered ``error(internal)`` (the controller could not apply it, which
   says nothing about the result) is sent again as a new request (a resend under the old id
   would get the cached error) after ``INTERNAL_ERROR_BACKOFF.delay(n)``, up to
   ``INTERNAL_ERROR_RETRIES`` times; after that the trial is left to its lease expiry, like a
   report that never arrived.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka
from msgspec.structs import replace

from pbt_actors.common.backoff import Backoff
from pbt_actors.common.exit_codes import EXIT_TRIAL_TIMEOUT
from pbt_actors.control.deadlines import TIMEOUT_ERROR
from pbt_actors.model.errors import MessageTooLarge, PbtError, RequestTimeout
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Error,
    Fail,
    Heartbeat,
    Hello,
    Message,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
    Wait,
)
from pbt_actors.runtime.worker.trial_context import TrialContext, default_device
from pbt_actors.runtime.worker.trial_marker import clear_marker, marker_path, markers_dir, write_marker
from pbt_actors.runtime.worker.trial_runner import TrainFn, build_context, execute
from pbt_actors.transport.endpoints import WorkerEndpoint

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 2.0
TIMEOUT_GRACE_S = 5.0
"""After a trial timeout, how long ``train`` has to return before the process ends itself."""
PREEMPT_GRACE_S = 20.0
RESENDS_PER_ROUND = 2
"""Resends within one round (one request id) before the worker checks for a preemption."""
INTERNAL_ERROR_RETRIES = 8
INTERNAL_ERROR_BACKOFF = Backoff(initial_s=0.2, factor=2.0, max_s=30.0)
"""A report answered ``error(internal)`` is sent again after 0.2, 0.4, ... s (8 times, ~50 s in
all); after that the trial is left to its lease expiry, like a report that never arrived."""


class ControllerGone(PbtError):
    """No reply at all from the controller for ``controller_timeout_s``: it is gone for good (a
    preempted or deleted controller job). The worker stops (``worker_process`` exits with
    ``EXIT_NO_CONTROLLER``, which its host supervisor does not restart) instead of waiting
    forever, so that the cluster manager can reschedule or end the job."""


class WrongRun(PbtError):
    """The controller serves another run than the one this worker joined (``error(wrong_run)``):
    this worker is stale (its run ended while it was away). It must exit, not take the new
    run's trials (``worker_process`` exits with ``EXIT_WRONG_RUN``, which is not restarted)."""


def stamp_run(message: Message, run: str) -> Message:
    """``message`` carrying the run id ``run`` (requests have a ``run`` field; "" leaves it)."""
    if run and getattr(message, "run", None) == "":
        return replace(message, run=run)
    return message


@dataclass
class _Progress:
    """What the trial thread shares with the actor (guarded by ``lock``)."""

    lock: threading.Lock
    spec: TrialAssignment | None = None
    step: int = 0
    metrics: Mapping[str, float] | None = None
    fresh: bool = False
    ctx: TrialContext | None = None
    run: str = ""
    """The run id learned from the ``hello`` answer; every request carries it."""
    wrong_run: str = ""
    """Set when the controller answered ``wrong_run`` (its message)."""
    last_reply: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` of the last reply from the controller (any message; at first, when
    the worker started): what ``controller_timeout_s`` counts from."""
    heartbeat_queued: bool = False
    """A heartbeat is told and not yet started: the ticker tells no other (while the controller
    is unreachable each heartbeat waits its timeout, and unbounded tells would pile up)."""


@dataclass(frozen=True)
class _Call:
    """An explicit actor message: method name and arguments (no proxies, visible boundaries)."""

    method: str
    args: tuple[Any, ...]


class WorkerActor(pykka.ThreadingActor):
    """Owns the worker's socket; every network send happens on this actor's thread."""

    def __init__(self, connect: str, worker_id: str, endpoint_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.connect = connect
        self.worker_id = worker_id
        self.endpoint_options = dict(endpoint_options or {})
        self.endpoint: WorkerEndpoint | None = None
        self.progress = _Progress(threading.Lock())

    def on_start(self) -> None:
        self.endpoint = WorkerEndpoint(self.connect, self.worker_id, **self.endpoint_options)

    def on_stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("worker actor %s died: %s", self.worker_id, exception_value)
        if self.endpoint is not None:
            self.endpoint.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Call) and message.method in ("request", "heartbeat"):
            return getattr(self, message.method)(*message.args)
        raise PbtError(f"WorkerActor got an unknown message {message!r}")

    def request(self, message: Message, timeout_s: float = 5.0, retries: int | None = None) -> Message:
        assert self.endpoint is not None
        reply = self.endpoint.request(message, timeout_s=timeout_s, retries=retries)
        self._heard()
        return reply

    def _heard(self) -> None:
        """A reply came: the controller is there (``WorkerClient.controller_timeout_s``)."""
        with self.progress.lock:
            self.progress.last_reply = time.monotonic()

    def heartbeat(self) -> None:
        """Send one heartbeat for the running trial (told by the ticker; never raises)."""
        with self.progress.lock:
            spec, ctx = self.progress.spec, self.progress.ctx
            step, metrics, fresh = self.progress.step, self.progress.metrics, self.progress.fresh
            self.progress.fresh = False
            self.progress.heartbeat_queued = False
            run = self.progress.run
        if spec is None or self.endpoint is None:
            return
        payload = dict(metrics) if fresh and metrics else None
        message = Heartbeat(self.worker_id, spec.trial_id, spec.attempt, step, payload, run)
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
        self._heard()
        if isinstance(reply, Error) and reply.code == "wrong_run":
            log.error("controller refuses this worker: %s", reply.message)
            with self.progress.lock:
                self.progress.wrong_run = reply.message
            if ctx is not None:
                ctx.stop_event.set()
            return
        if isinstance(reply, Stop) and ctx is not None:
            log.info("controller stops trial %d: %s", spec.trial_id, reply.reason)
            ctx.stop_event.set()
            if TIMEOUT_ERROR in reply.reason:
                self._end_if_stuck(spec, reply.reason)

    def _end_if_stuck(self, spec: TrialAssignment, reason: str) -> None:
        """The trial timed out (the controller already counted the attempt as failed). ``train``
        may still notice ``ctx.should_stop`` and return; if it is still running the same
        attempt ``TIMEOUT_GRACE_S`` later, it is stuck (maybe in C code, which no thread can
        interrupt): the process ends with ``EXIT_TRIAL_TIMEOUT`` and its supervisor restarts
        it without counting that against the host."""
        def check() -> None:
            with self.progress.lock:
                stuck = self.progress.spec is spec
            if stuck:
                log.error("trial %d attempt %d is stuck after its timeout (%s); ending this worker process",
                          spec.trial_id, spec.attempt, reason)
                os._exit(EXIT_TRIAL_TIMEOUT)

        timer = threading.Timer(TIMEOUT_GRACE_S, check)
        timer.daemon = True
        timer.start()


class _ActorLink:
    """The ``TrialLink`` the context reports through: shared state, no network wait."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress

    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        with self.progress.lock:
            self.progress.step, self.progress.metrics, self.progress.fresh = step, dict(metrics), True
            ctx = self.progress.ctx
        return ctx is None or not ctx.stop_event.is_set()


class WorkerClient:
    """A worker whose trial loop the host program drives (``run_one``) or hands over (``run``).

    Args:
        connect: the controller's endpoint (``tcp://host:port``, ``ipc://...``).
        train: the user's ``train(ctx)``.
        checkpoint_root: where checkpoint files live: a folder (shared between hosts) or an
            fsspec URL such as ``s3://bucket/prefix`` (``pbt_actors.storage.checkpoint_urls``).
        worker_id: unique per worker slot; stable across restarts of that slot.
        device: what ``ctx.device`` says (default: ``cuda:0`` when pinned to a GPU, else cpu).
        controller_timeout_s: give up (``ControllerGone``) after this long without any reply
            from the controller; 0 waits forever (the module doc, retry rule 3).
    """

    def __init__(self, connect: str, train: TrainFn, checkpoint_root: str, *, worker_id: str | None = None,
                 device: str | None = None, endpoint_options: Mapping[str, Any] | None = None,
                 request_timeout_s: float = 5.0, objective: Sequence[str] = (),
                 controller_timeout_s: float = 0.0) -> None:
        if controller_timeout_s < 0:
            raise ValueError("controller_timeout_s must be >= 0 (0: wait forever)")
        self.connect = connect
        self.controller_timeout_s = controller_timeout_s
        self.controller_gone = threading.Event()
        """Set once the controller was silent for ``controller_timeout_s``: this worker stops."""
        self.train = train
        self.objective = tuple(objective)
        """The objective's metric names: a trial that ends without them is a failed attempt."""
        self.checkpoint_root = checkpoint_root
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.device = device or default_device()
        self.request_timeout_s = request_timeout_s
        self.actor = WorkerActor.start(connect, self.worker_id, endpoint_options)
        self.progress: _Progress = self.actor.proxy().progress.get()
        self.preempt = threading.Event()
        self._ticker_stop = threading.Event()
        self._ticker_wake = threading.Event()
        """Set when the heartbeat interval changed (a new trial) or the client closes."""
        self._heartbeat_s = 1.0
        self._ticker = threading.Thread(target=self._tick, name=f"{self.worker_id}-ticker", daemon=True)
        self._ticker.start()
        self.trials_run = 0
        self._marker = marker_path(markers_dir(checkpoint_root), self.worker_id)
        """Names the trial this process runs, for its host supervisor (``trial_marker``)."""
        self._next_reply: Message | None = None
        """The controller's answer about the next trial, when it came with a report's ack."""

    # --- network through the actor -----------------------------------------------------------
    def _request(self, message: Message, retries: int | None = None) -> Message:
        timeout_s = self.request_timeout_s
        left = self._controller_time_left()
        if left is not None and retries is not None:
            # the whole round (the first wait and ``retries`` doubling resends) fits in the time
            # left, so the give-up comes on time; resends keep the id, so a request the
            # controller holds (long poll, ``PARK_S``) is still answered within the round
            timeout_s = min(timeout_s, max(0.05, left / (2 ** (retries + 1) - 1)))
        future = self.actor.ask(_Call("request", (message, timeout_s, retries)), block=False)
        result: Message = future.get()
        return result

    def _controller_time_left(self) -> float | None:
        """Seconds until this worker gives up on a silent controller; None: never (timeout 0)."""
        if getattr(self, "controller_timeout_s", 0.0) <= 0:  # (absent: a bare client in tests)
            return None
        progress: _Progress | None = getattr(self, "progress", None)
        if progress is None:
            return None
        with progress.lock:
            last = progress.last_reply
        return last + self.controller_timeout_s - time.monotonic()

    def _check_controller(self) -> None:
        """Give up on a controller silent for ``controller_timeout_s``: set ``controller_gone``
        and stop the running trial (``ctx.should_stop``, through the preempt event: the trial
        may save a resume checkpoint, though with no controller to record it a later attempt
        starts from the last recorded one). Called by the ticker and by ``_send``."""
        left = self._controller_time_left()
        if left is None or left > 0 or self.controller_gone.is_set():
            return
        self.controller_gone.set()
        self.preempt.set()
        log.error("no controller at %s for %g s; giving up", self.connect, self.controller_timeout_s)

    def _raise_if_gone(self) -> None:
        if self._controller_time_left() is None:
            return
        self._check_controller()
        if self.controller_gone.is_set():
            raise ControllerGone(f"no controller at {self.connect} for {self.controller_timeout_s:g} s; giving up")

    def _send(self, message: Message, *, grace_s: float | None, internal_retries: int = 0) -> Message | None:
        """The worker's one retry loop (module docstring): send ``message`` until answered.

        Args:
            grace_s: once preempted, keep trying this much longer (a report is worth it);
                None: give up at once (a request that can simply be dropped).
            internal_retries: how often an ``error(internal)`` answer is sent again.
        Returns:
            The reply, or None when the process was preempted before one came.

        Raises:
            ControllerGone: no reply at all for ``controller_timeout_s`` (before or during this).
            WrongRun: the controller serves another run.
        """
        preempted_at: float | None = None
        refused = 0
        progress: _Progress | None = getattr(self, "progress", None)  # None: a bare client in tests
        if progress is not None:
            with progress.lock:
                message = stamp_run(message, progress.run)
        while True:
            self._raise_if_gone()
            try:
                reply = self._request(message, retries=RESENDS_PER_ROUND)
            except RequestTimeout:
                log.info("controller silent for a %s; still trying", message.TYPE)
                self._raise_if_gone()
                if self.preempt.is_set():
                    preempted_at = preempted_at or time.monotonic()
                    if grace_s is None or time.monotonic() - preempted_at > grace_s:
                        return None
                continue
            if isinstance(reply, Error) and reply.code == "wrong_run":
                if progress is not None:
                    with progress.lock:
                        progress.wrong_run = reply.message
                log.error("controller refuses worker %s: %s; exiting", self.worker_id, reply.message)
                raise WrongRun(reply.message)
            if not isinstance(reply, Error) or reply.code != "internal":
                return reply
            if refused >= internal_retries or self.preempt.is_set():
                return reply
            log.warning("controller failed to apply %s (%s); sending it again", message.TYPE, reply.message[:200])
            self.preempt.wait(INTERNAL_ERROR_BACKOFF.delay(refused))
            refused += 1

    def hello(self) -> Message | None:
        """Introduce this worker; the ``ack`` names the run id that later requests carry.

        Raises:
            WrongRun: this worker already belongs to another run (a second hello after the
                controller was replaced by another run's).
        """
        with self.progress.lock:
            run = self.progress.run
        reply = self._send(Hello(self.worker_id, socket.gethostname(), os.getpid(), self.device, run),
                           grace_s=None)
        if isinstance(reply, Ack) and reply.run:
            with self.progress.lock:
                self.progress.run = reply.run
        return reply

    @property
    def run_id(self) -> str:
        """The run this worker joined ("" before its hello was answered)."""
        with self.progress.lock:
            return self.progress.run

    def _tick(self) -> None:
        # Sleeps until the next heartbeat is due (not a fixed short poll): every wake-up takes
        # the GIL from the training thread. A changed interval applies from the next wake-up.
        last = time.monotonic()
        while True:
            self._ticker_wake.wait(max(0.01, last + self._heartbeat_s - time.monotonic()))
            self._ticker_wake.clear()
            if self._ticker_stop.is_set():
                return
            self._check_controller()  # stops a trial that trains on with nobody to report to
            if time.monotonic() - last >= self._heartbeat_s:
                last = time.monotonic()
                with self.progress.lock:
                    if self.progress.heartbeat_queued:
                        continue  # the last one has not even started: the controller is slow or gone
                    self.progress.heartbeat_queued = True
                try:
                    self.actor.tell(_Call("heartbeat", ()))
                except pykka.ActorDeadError:
                    return

    # --- the trial loop --------------------------------------------------------------------------
    def run_one(self) -> bool:
        """Ask for one trial and run it. Returns False when the experiment is done."""
        reply, self._next_reply = self._next_reply, None
        if reply is None:
            with self.progress.lock:
                wrong_run = self.progress.wrong_run
            if wrong_run:  # a heartbeat heard it: do not ask the new run for work
                raise WrongRun(wrong_run)
            reply = self._send(RequestTrial(self.worker_id), grace_s=None)
        if reply is None:
            return False
        if isinstance(reply, Done):
            return False
        if isinstance(reply, Wait):
            self._pause(min(reply.retry_after_s, 5.0))
            return not self.preempt.is_set()
        if isinstance(reply, Error):
            log.warning("controller refused request_trial: %s %s", reply.code, reply.message)
            self._pause(1.0)
            return not self.preempt.is_set()
        if not isinstance(reply, TrialAssignment):
            log.warning("unexpected reply to request_trial: %r", reply)
            return True
        self.run_trial(reply)
        return not self.preempt.is_set()

    def _pause(self, seconds: float) -> None:
        """Wait as a reply said (or until preempted). That pause is not the controller's
        silence: the controller timeout counts from its end (set in advance, so that the
        ticker's check during a pause longer than the timeout does not give up either)."""
        with self.progress.lock:
            self.progress.last_reply = max(self.progress.last_reply, time.monotonic() + seconds)
        self.preempt.wait(seconds)

    def run(self) -> None:
        """Run trials until the experiment is done or the process is being preempted."""
        while self.run_one():
            pass

    def run_trial(self, spec: TrialAssignment) -> None:
        """Run one assignment (``trial_runner``), heartbeating meanwhile, and deliver its outcome."""
        ctx = build_context(spec, self.checkpoint_root, self.device, link=_ActorLink(self.progress),
                            preempt_event=self.preempt)
        with self.progress.lock:
            self.progress.spec, self.progress.ctx = spec, ctx
            self.progress.step, self.progress.metrics, self.progress.fresh = spec.start_step, None, False
        self._heartbeat_s = max(0.05, spec.heartbeat_s)
        self._ticker_wake.set()
        write_marker(self._marker, spec.trial_id, spec.attempt)
        try:
            # ``ask_next``: the ack brings the next trial along (one round trip)
            outcome = execute(ctx, self.train, self.worker_id, ask_next=True, objective=self.objective)
        finally:
            clear_marker(self._marker)
            self._clear()
        if outcome is not None:  # None: the controller stopped it; nothing to report
            self._deliver(outcome)
        self.trials_run += 1

    def _deliver(self, message: Message) -> None:
        """Send a report/fail until acknowledged (``_send``) and take in the answer.

        A message too large for a frame (``MessageTooLarge``: it would be dropped unseen and
        resent forever) becomes a retryable ``fail`` of the attempt that says so; a ``fail``
        that is itself too large leaves the trial to its lease expiry."""
        try:
            reply = self._send(message, grace_s=PREEMPT_GRACE_S, internal_retries=INTERNAL_ERROR_RETRIES)
        except MessageTooLarge as exc:
            if not isinstance(message, Report):
                log.error("cannot deliver %s for trial %d: %s; it will be re-run after its lease expires",
                          message.TYPE, getattr(message, "trial_id", -1), exc)
                return
            text = (f"the trial's result is too large to send ({exc}): {len(message.measurements)} "
                    f"measurements, {len(message.final)} final metrics; report fewer or smaller metrics")
            log.error("trial %d attempt %d failed: %s", message.trial_id, message.attempt, text)
            self._deliver(Fail(self.worker_id, message.trial_id, message.attempt, text, True))
            return
        if reply is None:
            log.error("preempted before the controller acknowledged %s for a trial; it will be re-run",
                      message.TYPE)
            return
        if isinstance(reply, Error):
            log.warning("controller rejected %s for trial: %s %s", message.TYPE, reply.code, reply.message)
        elif isinstance(reply, TrialAssignment | Wait | Done) and isinstance(message, Report) and message.next:
            self._next_reply = reply  # the report was applied; this answers our next request
        elif not isinstance(reply, Ack | Stop):
            log.warning("unexpected reply to %s: %r", message.TYPE, reply)

    def _clear(self) -> None:
        with self.progress.lock:
            self.progress.spec, self.progress.ctx = None, None

    def close(self) -> None:
        self._ticker_stop.set()
        self._ticker_wake.set()
        self._ticker.join(timeout=2)
        try:
            self.actor.stop(timeout=5)
        except pykka.Timeout:
            log.warning("worker actor did not stop in time")

    def install_sigterm_handler(self) -> None:
        """SIGTERM = graceful preemption: ``ctx.should_stop`` turns True, the loop ends after
        the current trial reports (or hands back a resume checkpoint)."""
        def on_term(signum: int, frame: Any) -> None:
            self.preempt.set()

        signal.signal(signal.SIGTERM, on_term)
