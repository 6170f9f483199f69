"""HostSupervisorActor: one worker process per device slot, restarted when it dies.

Layer 4. Each child is a real OS process (so a CUDA crash, an OOM kill or a SIGKILL takes
out one slot, never the supervisor), built afresh from its ``ChildSpec`` on every restart.

The actor owns every slot's state and process; others reach it through its pykka proxy,
calling its methods (``status``, ``poll_children``, ``start_child``, ``refuse``) as messages.
A ticker thread asks it to ``poll_children`` every ``WATCH_INTERVAL_S`` and waits for that to
finish, so at most one poll is ever queued. On an exit the actor applies the pure
``RestartTracker`` rules, has the ``LostNotifier`` tell the controller ``worker_lost`` at once
(so the trial is re-queued now, not at lease expiry) and schedules the restart after its
backoff. Calls that need no answer are ``defer``-red (pykka's tell): one that raises kills the
actor, whose ``on_failure`` then stops every worker, as a crashed supervisor must.

With ``state_path`` the actor also publishes its children's state (``host_state``) on every
change and at least every ``HOST_STATE_REFRESH_S``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pykka

from pbt_actors.common.backoff import Backoff
from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER, EXIT_WRONG_RUN
from pbt_actors.model.protocol import WorkerLost
from pbt_actors.runtime.host.host_state import HOST_STATE_REFRESH_S, ChildInfo, write_host_state
from pbt_actors.runtime.host.lost_notifier import LostNotifier
from pbt_actors.runtime.host.restart_rules import (
    ChildSpec,
    Intensity,
    Restart,
    RestartDecision,
    RestartTracker,
    fresh_worker_id,
)
from pbt_actors.runtime.worker.trial_marker import RUNNING_DIR, marker_path, take_marker

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.05
FINAL_EXIT_REASONS = {
    EXIT_WRONG_RUN: "the controller serves another run: this worker is stale, not restarted",
    EXIT_NO_CONTROLLER: "no reply from the controller for --controller-timeout seconds: not restarted",
}
"""Why a final exit code (``ChildSpec.final_exit_codes``) ends a worker."""
STOP_GRACE_S = 5.0
"""How long ``stop`` lets the workers finish after their SIGTERM (checkpoint, report the trial
preempted) before it SIGKILLs them; ``pbt-actors worker --stop-grace`` sets it."""


@dataclass
class ChildState:
    """What the supervisor knows of one slot (returned by ``status``)."""

    spec: ChildSpec
    tracker: RestartTracker
    process: Any = None
    started_at: float = 0.0
    state: str = "starting"  # running | waiting | exited | gave_up
    starts: int = 0
    last_exit: int | None = None
    reason: str = ""
    since: float = field(default_factory=time.time)  # wall clock of the last state change
    worker_id: str = ""
    """The worker id of the slot's current (or last) process: the slot id, or with
    ``ChildSpec.fresh_ids`` one of its own per start (``<slot>-<6 hex>``)."""
    successor: str = ""
    """The worker id chosen (and announced) for the slot's next process before its predecessor
    was reported lost, so the controller never stops waiting for this host in between."""

    def info(self) -> ChildInfo:
        pid = self.process.pid if self.process is not None else None
        return ChildInfo(self.spec.id, self.state, pid, self.starts, self.last_exit, self.reason, self.since,
                         self.worker_id)


def _tell(deferred: Callable[..., None], *args: Any) -> None:
    """A proxy's ``defer`` from another thread; an actor already gone hears nothing."""
    with contextlib.suppress(pykka.ActorDeadError):
        deferred(*args)


class HostSupervisorActor(pykka.ThreadingActor):
    """Starts, watches and restarts worker processes; reports lost workers to the controller."""

    def __init__(self, children: Sequence[ChildSpec], *, controller: str | None = None,
                 intensity: Intensity | None = None, backoff: Backoff | None = None,
                 endpoint_options: Mapping[str, Any] | None = None, state_path: str | os.PathLike[str] | None = None,
                 host: str | None = None, markers: str | os.PathLike[str] | None = None,
                 stop_grace_s: float = STOP_GRACE_S, stopping: threading.Event | None = None,
                 experiment_file: tuple[str, str] = ("", "")) -> None:
        super().__init__()
        self.experiment_file = experiment_file
        """(path, sha256) of the experiment file the workers run, said in the host's hello."""
        self.stop_grace_s = stop_grace_s
        self.stopping = stopping if stopping is not None else threading.Event()
        """Set when the host is shutting down (``HostSupervisor.begin_stop``, from a signal
        handler): a worker that exits now (it got the same SIGTERM) is not restarted."""
        self.state_path = Path(state_path) if state_path is not None else None
        # which trial each worker runs (``trial_marker``): beside the state file by default,
        # i.e. ``<checkpoint root>/.pbt-hosts/running``, where the workers write them
        if markers is None and self.state_path is not None:
            markers = self.state_path.parent / RUNNING_DIR.name
        self.markers = Path(markers) if markers is not None else None
        self.host = host or socket.gethostname()
        self.state_write_failed = False
        self.children = {spec.id: ChildState(spec, RestartTracker(intensity or Intensity(), backoff or Backoff()))
                         for spec in children}
        self.controller = controller
        self.endpoint_options = dict(endpoint_options or {})
        self.notifier: LostNotifier | None = None
        self.watched: dict[str, Any] = {}
        """The processes ``poll_children`` polls (child id -> process), until each exits."""
        self.ticker_stop = threading.Event()
        self.refresh_at = 0.0
        self.all_done = threading.Event()
        self.timers: list[threading.Timer] = []
        self.refused: str | None = None
        """Why the controller refused this host (``host_taken``, ``wrong_run``): every worker
        was stopped and none is restarted."""
        self._self: pykka.ActorProxy[HostSupervisorActor] | None = None
        """This actor's own proxy, for its ticker, timers and notifier (private: pykka does not
        introspect it)."""

    def on_start(self) -> None:
        self._self = self.actor_ref.proxy()
        for child in self.children.values():  # the first processes' ids, in the first hello
            child.worker_id = fresh_worker_id(child.spec.id) if child.spec.fresh_ids else child.spec.id
        if self.controller is not None:
            identity = f"supervisor-{socket.gethostname()}-{os.getpid()}"
            self.notifier = LostNotifier(self.controller, identity, self.endpoint_options, host=self.host,
                                         workers=self._worker_ids(), experiment_file=self.experiment_file,
                                         on_refused=functools.partial(_tell, self._self.refuse.defer))
        threading.Thread(target=_tick, args=(self._self, self.ticker_stop), name="pbt-supervisor-ticker",
                         daemon=True).start()
        for child_id in self.children:
            self.start_child(child_id)
        self._write_state()

    def on_stop(self) -> None:
        self.stopping.set()
        self.ticker_stop.set()
        for timer in self.timers:
            timer.cancel()
        _terminate_all([child.process for child in self.children.values()], self.stop_grace_s)
        if self.notifier is not None:
            self.notifier.stop()
        self._write_state(stopped=True)

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("host supervisor died: %s; terminating its workers", exception_value)
        self.on_stop()

    # --- messages ---------------------------------------------------------------------------------
    def status(self) -> list[ChildInfo]:
        return [child.info() for child in self.children.values()]

    def poll_children(self) -> None:
        """The ticker's call: handle the processes that exited; rewrite the state file when due."""
        if time.monotonic() >= self.refresh_at:  # the state file's heartbeat, even when nothing changed
            self._write_state()
        exited = [(child_id, code) for child_id, process in self.watched.items()
                  if (code := process.poll()) is not None]
        for child_id, code in exited:
            del self.watched[child_id]
            self._on_exit(child_id, code)

    def refuse(self, reason: str) -> None:
        """The controller refused this host: stop every worker, restart none, and be done."""
        log.error("the controller refuses this host: %s; stopping its workers", reason)
        self.refused = reason
        for timer in self.timers:
            timer.cancel()
        for child in self.children.values():
            _terminate(child.process)
            child.state, child.reason, child.since = "gave_up", f"refused by the controller: {reason}", time.time()
        self._write_state()
        self.all_done.set()

    def start_child(self, child_id: str) -> None:
        child = self.children[child_id]
        if self.refused is not None or self.stopping.is_set():
            return
        if child.state in ("gave_up", "exited") and child.starts:
            return
        if child.spec.fresh_ids and child.starts:
            # a restart: a worker id of its own, announced (the host's hello) before anything
            # can be said about it, so that the controller lets this supervisor report it lost
            # and never mixes it up with its dead predecessor
            if child.successor:  # chosen and announced already, before the predecessor's loss
                child.worker_id, child.successor = child.successor, ""
            else:
                child.worker_id = fresh_worker_id(child.spec.id)
                if self.notifier is not None:
                    self.notifier.announce(self._worker_ids())
        try:
            child.process = child.spec.factory(child.worker_id) if child.spec.fresh_ids else child.spec.factory()
        except Exception as exc:
            log.exception("could not start worker %s", child_id)
            self._on_exit(child_id, None, reason=f"start failed: {exc}")
            return
        child.started_at, child.state, child.since = time.monotonic(), "running", time.time()
        child.starts += 1
        self.watched[child_id] = child.process
        log.info("worker %s started as %s (pid %s, start #%d)", child_id, child.worker_id, child.process.pid,
                 child.starts)
        self._write_state()

    def restart_later(self, child_id: str, delay_s: float) -> None:
        """Start ``child_id`` again in ``delay_s`` (its backoff)."""
        assert self._self is not None
        timer = threading.Timer(delay_s, _tell, args=(self._self.start_child.defer, child_id))
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    # --- on the actor's thread --------------------------------------------------------------------
    def _worker_ids(self) -> tuple[str, ...]:
        """The worker ids of the slots' current processes (what the host's ``hello`` lists)."""
        return tuple(c.worker_id or c.spec.id for c in self.children.values())

    def _write_state(self, *, stopped: bool = False) -> None:
        """Publish the children's state to ``state_path`` (never raises)."""
        self.refresh_at = time.monotonic() + HOST_STATE_REFRESH_S
        if self.state_path is None:
            return
        try:
            write_host_state(self.state_path, self.host, self.status(), stopped=stopped)
        except OSError as exc:
            if not self.state_write_failed:  # once: a full or read-only disk must not flood the log
                log.warning("cannot write the host state file %s: %s", self.state_path, exc)
            self.state_write_failed = True

    def _on_exit(self, child_id: str, exit_code: int | None, reason: str = "") -> None:
        child = self.children[child_id]
        child.last_exit = exit_code
        if self.refused is not None:  # stopped because the controller refused the host
            return
        worker_id = child.worker_id or child_id  # the process that died (markers are by worker id)
        running = take_marker(marker_path(self.markers, worker_id)) if self.markers is not None else None
        if self.stopping.is_set():  # the host is being stopped (SIGTERM to it, or to its whole group)
            decision = RestartDecision(False, reason=f"exit code {exit_code} while the host stops: not restarted")
        elif exit_code is not None and exit_code in child.spec.final_exit_codes:
            why = FINAL_EXIT_REASONS.get(exit_code, "not restarted")
            decision = RestartDecision(False, give_up=True, reason=f"exit code {exit_code} is final: {why}")
        else:
            decision = child.tracker.on_exit(child.spec.restart, exit_code, child.started_at, time.monotonic(),
                                             trial=running.trial_id if running is not None else None,
                                             proven=running is not None and running.trials_before > 0)
        restart = None
        if decision.restart:
            assert self._self is not None
            child.state, child.reason = "waiting", f"restarting in {decision.delay_s:.2f}s after {decision.reason}"
            if decision.explained:
                log.warning("worker %s died; restart in %.2fs, not counted against this host: %s", child_id,
                            decision.delay_s, decision.reason)
            else:
                log.warning("worker %s exited (code %s); restart in %.2fs", child_id, exit_code, decision.delay_s)
            restart = functools.partial(_tell, self._self.restart_later.defer, child_id, decision.delay_s)
        if exit_code not in (0, EXIT_NO_CONTROLLER) and self.notifier is not None:  # (nobody to tell)
            if restart is not None and child.spec.fresh_ids:
                # the successor's id first, then the loss (the notifier keeps their order): a run
                # that ends in between still waits for this host's restarted worker, which would
                # otherwise ask a controller that has left, forever (clean_exit's "starting" rule)
                child.successor = fresh_worker_id(child.spec.id)
                self.notifier.announce(tuple(child.successor if c is child else c.worker_id or c.spec.id
                                             for c in self.children.values()))
            # told from the notifier's thread, so that an unreachable controller (up to ~6 s of
            # resends) never blocks this actor; the restart waits for it, so that the controller
            # hears "lost" before the same worker id asks for new work
            self.notifier.tell(WorkerLost(worker_id, reason or f"process exited with code {exit_code}"), restart)
        elif restart is not None:
            self.restart_later(child_id, decision.delay_s)
        if decision.give_up:
            child.state, child.reason = "gave_up", decision.reason
            log.error("GIVING UP on worker %s: %s", child_id, decision.reason)
        elif not decision.restart:
            child.state, child.reason = "exited", decision.reason
        child.since = time.time()
        self._write_state()
        if all(c.state in ("exited", "gave_up") for c in self.children.values()):
            self.all_done.set()


def _tick(supervisor: pykka.ActorProxy[HostSupervisorActor], stop: threading.Event) -> None:
    """Ask the supervisor to poll its children every ``WATCH_INTERVAL_S``, one poll at a time."""
    while not stop.wait(WATCH_INTERVAL_S):
        try:
            supervisor.poll_children().get()
        except pykka.ActorDeadError:
            return
        except Exception:  # its state is in doubt: stop it, which stops every worker
            log.exception("host supervisor failed to poll its workers; stopping")
            with contextlib.suppress(pykka.ActorDeadError):
                supervisor.actor_ref.stop(block=False)
            return


class HostSupervisor:
    """Handle for a running ``HostSupervisorActor``."""

    def __init__(self, children: Sequence[ChildSpec], **options: Any) -> None:
        self._stopping = threading.Event()
        self._stop_grace_s = float(options.get("stop_grace_s", STOP_GRACE_S))
        self.ref = HostSupervisorActor.start(children, stopping=self._stopping, **options)
        self.proxy = self.ref.proxy()
        self._done: threading.Event = self.proxy.all_done.get()

    def begin_stop(self) -> None:
        """From now on no worker is (re)started. Safe in a signal handler (it sets an event):
        a cluster manager's SIGTERM reaches the host and its workers at once, and a worker that
        exits before ``stop`` runs must not be restarted in between."""
        self._stopping.set()

    def status(self) -> list[ChildInfo]:
        return cast(list[ChildInfo], self.proxy.status().get(timeout=10))

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once every child exited for good (done, or given up)."""
        return self._done.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still running ``stop_grace_s`` later, and stop."""
        self.begin_stop()
        if self.ref.is_alive():
            self.ref.stop(timeout=self._stop_grace_s + 30)


def _terminate(process: Any, grace_s: float = 5.0) -> None:
    _terminate_all([process], grace_s)


def _terminate_all(processes: Sequence[Any], grace_s: float) -> None:
    """SIGTERM every live process at once, then give them ``grace_s`` together (not each in
    turn: a host of 8 workers must fit a cluster manager's grace period too), then SIGKILL."""
    live = [p for p in processes if p is not None and p.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in live:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %s did not stop within %.0fs of its SIGTERM; killing it", process.pid, grace_s)
            process.kill()
            process.wait(5)


__all__ = ["Backoff", "ChildInfo", "ChildSpec", "HostSupervisor", "HostSupervisorActor", "Intensity", "Restart"]
