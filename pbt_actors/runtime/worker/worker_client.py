"""The worker: request a trial, run the user's ``train(ctx)``, heartbeat, report, repeat.

Layer 4. Three threads per worker process, so that training never waits on the network:

* the **trial thread** (the caller of ``WorkerClient.run``/``run_one``) runs ``train(ctx)``
  and, between trials, asks for work and delivers results;
* the **``WorkerActor``** (``worker_actor``) owns the DEALER socket and sends every message;
* the **ticker** asks the actor for a heartbeat every ``spec.heartbeat_s`` while a trial runs,
  and gives up on a controller silent for ``controller_timeout_s``.

Running a trial (context, ``train``, what its end means) is ``pbt_actors.runtime.worker.trial_runner``,
shared with the in-process runner. ``ctx.report`` only records the latest metrics; they ride
on the next heartbeat, and a ``stop`` reply sets ``ctx.should_stop``.

Retrying is one loop, ``retry_loop.send_until_answered``, whose round is one
``WorkerEndpoint.request`` (the same bytes under one request id, resent ``RESENDS_PER_ROUND``
times with the endpoint's doubling wait: ZeroMQ may drop a frame). With a controller timeout
(``controller_timeout_s``, ``pbt-actors worker --controller-timeout``) each round is cut to fit
the time left, and once no reply at all has come for that long (counted from the last one,
heartbeats included) the worker gives up: ``ControllerGone`` (the process exits with
``EXIT_NO_CONTROLLER``), so that a cluster manager can reschedule a job whose controller is gone
for good. A running trial is told to stop (``ctx.should_stop``) by the ticker, which checks the
same clock.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pykka
from msgspec.structs import replace

from pbt_actors.model.errors import CheckpointWriteError, MessageTooLarge
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Error,
    Fail,
    Hello,
    Message,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
    Wait,
)
from pbt_actors.runtime.worker.background_writes import DEFAULT_MAX_PENDING, BackgroundWriter, StateCache, WriteJob
from pbt_actors.runtime.worker.retry_loop import (
    INTERNAL_ERROR_RETRIES,
    PREEMPT_GRACE_S,
    ControllerGone,
    WrongRun,
    send_until_answered,
)
from pbt_actors.runtime.worker.trial_context import default_device
from pbt_actors.runtime.worker.trial_marker import clear_marker, marker_path, markers_dir, write_marker
from pbt_actors.runtime.worker.trial_runner import TrainFn, build_context, execute
from pbt_actors.runtime.worker.worker_actor import SilenceClock, TrialSlot, WorkerActor

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 300.0
"""How long a leaving worker waits for its background checkpoint writes and their reports."""


def unresolvable_host(connect: str) -> str | None:
    """Why ``connect`` (``tcp://HOST:PORT``) cannot be reached because its host name does not
    resolve (``"the controller's host name 'x' does not resolve: ..."``), or None: it resolves,
    it is an address, or the endpoint is not TCP. ZeroMQ retries an unresolvable name
    silently, so without this a typo in ``--connect`` read as "no controller for 300 s"
    (issue 21, item 8)."""
    if not connect.startswith("tcp://"):
        return None
    host, _, port = connect[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if not host or host == "*":
        return None
    try:
        socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"the controller's host name {host!r} does not resolve ({exc.strerror})"
    except (OSError, UnicodeError):
        return None
    return None


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
            from the controller; 0 waits forever (the module doc).
    """

    def __init__(self, connect: str, train: TrainFn, checkpoint_root: str, *, worker_id: str | None = None,
                 device: str | None = None, endpoint_options: Mapping[str, Any] | None = None,
                 request_timeout_s: float = 5.0, objective: Sequence[str] = (),
                 controller_timeout_s: float = 0.0, background_writes: bool = True,
                 max_pending_writes: int = DEFAULT_MAX_PENDING, keep_in_memory: int = 2) -> None:
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
        self.silence = SilenceClock()
        self.actor = WorkerActor.start(connect, self.worker_id, endpoint_options, self.silence)
        self.connection: pykka.ActorProxy[WorkerActor] = self.actor.proxy()
        """The actor's proxy: each method call is a message to it (module docstring)."""
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
        self.writer = BackgroundWriter(max_pending_writes, f"{self.worker_id}-writer") if background_writes else None
        """Makes final checkpoints durable while the next trial trains (``background_writes``)."""
        self.memory = StateCache(keep_in_memory)
        """The states this worker saved, handed to a child trial here without reading the store."""
        self._next_reply: tuple[Message, TrialSlot] | None = None
        """The controller's answer about the next trial, when it came with a report's ack (and
        the slot that report offered for it)."""

    # --- network through the actor -----------------------------------------------------------
    def _request(self, message: Message, retries: int, slot: TrialSlot | None = None) -> Message:
        """One round for ``message`` on the actor's socket (``retry_loop.Round``); an assignment
        in reply runs in ``slot`` (``worker_actor``)."""
        timeout_s = self.request_timeout_s
        left = self._controller_time_left()
        if left is not None:
            # the whole round (the first wait and ``retries`` doubling resends) fits in the time
            # left, so the give-up comes on time; resends keep the id, so a request the
            # controller holds (long poll, ``PARK_S``) is still answered within the round
            timeout_s = min(timeout_s, max(0.05, left / (2 ** (retries + 1) - 1)))
        reply: Message = self.connection.request(message, timeout_s, retries, slot).get()
        return reply

    def _controller_time_left(self) -> float | None:
        """Seconds until this worker gives up on a silent controller; None: never (timeout 0)."""
        if self.controller_timeout_s <= 0:
            return None
        return self.silence.silent_since() + self.controller_timeout_s - time.monotonic()

    def _check_controller(self) -> None:
        """Give up on a controller silent for ``controller_timeout_s``: set ``controller_gone``
        and stop the running trial (``ctx.should_stop``, through the preempt event: the trial
        may save a resume checkpoint, though with no controller to record it a later attempt
        starts from the last recorded one). Called by the ticker and by ``_raise_if_gone``."""
        left = self._controller_time_left()
        if left is None or left > 0 or self.controller_gone.is_set():
            return
        self.controller_gone.set()
        self.preempt.set()
        log.error("%s", self._gone_text())

    def _gone_text(self) -> str:
        text = f"no controller at {self.connect} for {self.controller_timeout_s:g} s; giving up"
        unresolved = unresolvable_host(self.connect)
        return text if unresolved is None else f"{text}: {unresolved}"

    def _raise_if_gone(self) -> None:
        self._check_controller()
        if self.controller_gone.is_set():
            raise ControllerGone(self._gone_text())

    def _send(self, message: Message, *, grace_s: float | None, internal_retries: int = 0,
              slot: TrialSlot | None = None) -> Message | None:
        """``message`` sent until answered (``retry_loop``); None: preempted before a reply."""
        def round_trip(message: Message, retries: int) -> Message:
            return self._request(message, retries, slot)

        return send_until_answered(round_trip, message, preempt=self.preempt, check_gone=self._raise_if_gone,
                                   grace_s=grace_s, internal_retries=internal_retries)

    def hello(self) -> Message | None:
        """Introduce this worker; the ``ack`` names the run id that later requests carry.

        Raises:
            WrongRun: this worker already belongs to another run (a second hello after the
                controller was replaced by another run's).
        """
        return self._send(Hello(self.worker_id, socket.gethostname(), os.getpid(), self.device), grace_s=None)

    @property
    def run_id(self) -> str:
        """The run this worker joined ("" before its hello was answered)."""
        run: str = self.connection.run.get()
        return run

    def _tick(self) -> None:
        # Sleeps until the next heartbeat is due (not a fixed short poll): every wake-up takes
        # the GIL from the training thread. A changed interval applies from the next wake-up.
        last = time.monotonic()
        beat: pykka.Future[None] | None = None
        while True:
            self._ticker_wake.wait(max(0.01, last + self._heartbeat_s - time.monotonic()))
            self._ticker_wake.clear()
            if self._ticker_stop.is_set():
                return
            self._check_controller()  # stops a trial that trains on with nobody to report to
            if time.monotonic() - last >= self._heartbeat_s:
                last = time.monotonic()
                if beat is not None and not _finished(beat):
                    continue  # the last one is not done: the controller is slow or gone
                try:
                    beat = self.connection.heartbeat()
                except pykka.ActorDeadError:
                    return

    # --- the trial loop --------------------------------------------------------------------------
    def run_one(self) -> bool:
        """Ask for one trial and run it. Returns False when the experiment is done."""
        reply: Message | None
        if self._next_reply is not None:
            (reply, slot), self._next_reply = self._next_reply, None
        else:  # (a stale worker's actor answers ``wrong_run`` itself: ``WrongRun``)
            slot = TrialSlot()
            reply = self._send(RequestTrial(self.worker_id), grace_s=None, slot=slot)
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
        self.run_trial(reply, slot)
        return not self.preempt.is_set()

    def _pause(self, seconds: float) -> None:
        """Wait as a reply said (or until preempted). That pause is not the controller's
        silence: the controller timeout counts from its end (set in advance, so that the
        ticker's check during a pause longer than the timeout does not give up either)."""
        self.silence.pause(seconds)
        self.preempt.wait(seconds)

    def run(self) -> None:
        """Run trials until the experiment is done or the process is being preempted."""
        while self.run_one():
            pass

    def run_trial(self, spec: TrialAssignment, slot: TrialSlot | None = None) -> None:
        """Run one assignment (``trial_runner``), heartbeating meanwhile, and deliver its outcome.

        ``slot``: the one the request that brought ``spec`` offered (the actor knows already)."""
        if slot is None:
            slot = TrialSlot()
            self.connection.begin_trial.defer(spec, slot)
        if spec.attempt > 1:
            # a retry may be the trial that killed its worker before (a poison config): make the
            # trials this worker finished durable first, or its death would take them along
            self.flush_writes()
        ctx = build_context(spec, self.checkpoint_root, self.device, link=slot, preempt_event=self.preempt,
                            stop_event=slot.stop)
        ctx.writer, ctx.memory = self.writer, self.memory
        self._heartbeat_s = max(0.05, spec.heartbeat_s)
        self._ticker_wake.set()
        write_marker(self._marker, spec.trial_id, spec.attempt, self.trials_run)
        try:
            # ``ask_next``: the ack brings the next trial along (one round trip)
            outcome = execute(ctx, self.train, self.worker_id, ask_next=True, objective=self.objective)
        finally:
            clear_marker(self._marker)
        if isinstance(outcome, Report) and outcome.pending:
            assert ctx.pending is not None
            self._deliver_pending(outcome, ctx.pending)
        elif outcome is not None:  # its delivery tells the actor that it ended
            self._deliver(outcome)
        else:  # the controller stopped it; nothing to report
            self.connection.end_trial.defer()
        if self.preempt.is_set() and self._next_reply is not None:
            self._next_reply = None  # a preempted worker starts no other trial: the actor forgets it
            self.connection.end_trial.defer()
        self.trials_run += 1

    def _deliver_pending(self, report: Report, job: WriteJob) -> None:
        """Report a trial whose checkpoint is still being written (``Report.pending``), then
        complete it once durable (docs/design.md §15).

        When the answer is the next trial, it trains while the write goes on, and the writer's
        thread sends the completing report (the actor serialises the sends). Any other answer
        (``wait``: nothing else to train, typically the lineage's next trial needs this one
        completed first) means waiting for the write here and sending the completing report
        with ``next``, as without a background write."""
        self.connection.hold_writing.defer(report.trial_id, report.attempt)
        self._deliver(report)
        pending_next = self._next_reply
        if pending_next is not None and isinstance(pending_next[0], TrialAssignment) and not self.preempt.is_set():
            job.add_done_callback(lambda done: self._complete(report, done, ask_next=False))
            return
        self._next_reply = None
        if pending_next is not None:  # a wait/done we do not act on: the completing report asks again
            self.connection.end_trial.defer()
        assert self.writer is not None
        self.writer.resume()  # nothing to train meanwhile: write at once
        job.wait()
        self._complete(report, job, ask_next=not self.preempt.is_set())

    def _complete(self, report: Report, job: WriteJob, *, ask_next: bool) -> None:
        """Send the completing report for a pending one (or the store fault that ended it)."""
        try:
            self._send_completion(report, job, ask_next=ask_next)
        finally:
            self.connection.done_writing.defer(report.trial_id)

    def _send_completion(self, report: Report, job: WriteJob, *, ask_next: bool) -> None:
        if job.error is None and job.ref is not None:
            self._deliver(replace(report, checkpoint=job.ref, pending=False, next=ask_next))
            return
        log.error("trial %d attempt %d: its checkpoint could not be written: %s", report.trial_id, report.attempt,
                  job.error)
        if isinstance(job.error, CheckpointWriteError):  # the store's fault: re-queued uncharged
            text = f"CheckpointStoreFault: {job.error}"[-8000:]  # as trial_runner words it
            self._deliver(Fail(self.worker_id, report.trial_id, report.attempt, text, True, fault="checkpoint_store"))
        else:
            text = f"checkpoint write failed: {job.error}"[-8000:]
            self._deliver(Fail(self.worker_id, report.trial_id, report.attempt, text, True))

    def flush_writes(self, timeout: float | None = None) -> bool:
        """Wait until every background write is durable and its completing report answered
        (before the process exits, SIGTERM included). False on timeout."""
        if self.writer is None:
            return True
        self.writer.resume()
        return self.writer.drain(timeout)  # a job is done once its callbacks (the report) returned

    def _deliver(self, message: Report | Fail) -> None:
        """Send a report/fail until acknowledged (``_send``) and take in the answer.

        A message too large for a frame (``MessageTooLarge``: it would be dropped unseen and
        resent forever) becomes a retryable ``fail`` of the attempt that says so; a ``fail``
        that is itself too large leaves the trial to its lease expiry."""
        slot = TrialSlot() if isinstance(message, Report) and message.next else None
        try:
            reply = self._send(message, grace_s=PREEMPT_GRACE_S, internal_retries=INTERNAL_ERROR_RETRIES, slot=slot)
        except MessageTooLarge as exc:
            if not isinstance(message, Report):
                log.error("cannot deliver %s for trial %d: %s; it will be re-run after its lease expires",
                          message.TYPE, message.trial_id, exc)
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
        elif isinstance(reply, TrialAssignment | Wait | Done) and slot is not None:
            self._next_reply = (reply, slot)  # the report was applied; this answers our next request
        elif not isinstance(reply, Ack | Stop):
            log.warning("unexpected reply to %s: %r", message.TYPE, reply)

    def close(self) -> None:
        if self.writer is not None:
            if not self.flush_writes(FLUSH_TIMEOUT_S):  # an abandoned write only re-runs its trial
                log.error("checkpoint writes still unfinished after %g s; leaving without them (their "
                          "trials are re-queued when this worker's leases end)", FLUSH_TIMEOUT_S)
            self.writer.close(timeout=5)
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


def _finished(future: pykka.Future[None]) -> bool:
    """Whether ``future`` has its result (a heartbeat that raised is logged, and finished)."""
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except Exception:
        log.exception("a heartbeat failed")
    return True


__all__ = ["ControllerGone", "WorkerClient", "WrongRun"]
