"""HostSupervisorActor: one worker process per device slot, restarted when it dies.

Layer 4. Each child is a real OS process (so a CUDA crash, an OOM kill or a SIGKILL takes
out one slot, never the supervisor), built afresh from its ``ChildSpec`` on every restart.
A watcher thread polls the processes and tells the actor about exits; the actor applies the
pure ``RestartTracker`` rules, tells the controller ``worker_lost`` at once (so the trial is
re-queued now, not at lease expiry) and schedules the restart after its backoff.

With ``state_path`` the actor also writes its children's state (running, waiting to restart,
exited, gave up, and why) to a small JSON file, atomically (temp file + rename), on every
change. Another process (``pbt-actors status``) reads it with ``read_host_states``; the
convention is one file per host under ``<checkpoint root>/.pbt-hosts/`` (``host_state_path``),
because the checkpoint root is the one folder that every host and the controller share.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pykka

from pbt_actors.common.atomic_files import write_atomically
from pbt_actors.common.backoff import Backoff
from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER, EXIT_WRONG_RUN
from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import Ack, Error, Hello, WorkerLost
from pbt_actors.runtime.host.restart_rules import (
    ChildSpec,
    Intensity,
    Restart,
    RestartDecision,
    RestartTracker,
    fresh_worker_id,
)
from pbt_actors.runtime.worker.trial_marker import RUNNING_DIR, marker_path, take_marker
from pbt_actors.storage.checkpoint_urls import local_state_folder
from pbt_actors.transport.endpoints import WorkerEndpoint

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.05
HOST_HELLO_S = 3.0
"""The supervisor repeats its ``hello`` (host id, worker ids) this often: its claim on them at
the controller lasts ``control.session.HOST_LEASE_S`` past the last one."""
REFUSALS = ("host_taken", "wrong_run")
"""Answers to the supervisor's ``hello`` that stop the whole host (docs/protocol.md §4)."""
FINAL_EXIT_REASONS = {
    EXIT_WRONG_RUN: "the controller serves another run: this worker is stale, not restarted",
    EXIT_NO_CONTROLLER: "no reply from the controller for --controller-timeout seconds: not restarted",
}
"""Why a final exit code (``ChildSpec.final_exit_codes``) ends a worker."""
STOP_GRACE_S = 5.0
"""How long ``stop`` lets the workers finish after their SIGTERM (checkpoint, report the trial
preempted) before it SIGKILLs them; ``pbt-actors worker --stop-grace`` sets it."""
HOST_STATE_DIR = ".pbt-hosts"
HOST_STATE_VERSION = 1
# The state file is rewritten at least this often (a heartbeat: ``updated_at``), and says so
# (``refresh_s``); a reader calls a host that missed ``HOST_LOST_AFTER`` refreshes lost
# (``read_host_states``): its supervisor died without saying so (SIGKILL, power, network).
HOST_STATE_REFRESH_S = 5.0
HOST_LOST_AFTER = 3


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


@dataclass(frozen=True)
class ChildInfo:
    id: str
    state: str
    pid: int | None
    starts: int
    last_exit: int | None
    reason: str
    since: float = 0.0
    worker: str = ""
    """The worker id of the slot's current (or last) process (``id`` is the slot)."""


@dataclass(frozen=True)
class _Exited:
    child_id: str
    exit_code: int | None


@dataclass(frozen=True)
class _Refused:
    reason: str


@dataclass(frozen=True)
class _StartChild:
    child_id: str


@dataclass(frozen=True)
class _Status:
    pass


@dataclass(frozen=True)
class _RefreshState:
    """Rewrite the host state file (its periodic heartbeat)."""


@dataclass
class _Watch:
    """Processes the watcher thread polls (child id -> process), guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    processes: dict[str, Any] = field(default_factory=dict)


class HostSupervisorActor(pykka.ThreadingActor):
    """Starts, watches and restarts worker processes; reports lost workers to the controller."""

    def __init__(self, children: Sequence[ChildSpec], *, controller: str | None = None,
                 intensity: Intensity | None = None, backoff: Backoff | None = None,
                 endpoint_options: Mapping[str, Any] | None = None, state_path: str | os.PathLike[str] | None = None,
                 host: str | None = None, markers: str | os.PathLike[str] | None = None,
                 stop_grace_s: float = STOP_GRACE_S, stopping: threading.Event | None = None) -> None:
        super().__init__()
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
        self.notifier: _LostNotifier | None = None
        self.watch = _Watch()
        self.watch_stop = threading.Event()
        self.all_done = threading.Event()
        self.timers: list[threading.Timer] = []
        self.refused: str | None = None
        """Why the controller refused this host (``host_taken``, ``wrong_run``): every worker
        was stopped and none is restarted."""

    def on_start(self) -> None:
        for child in self.children.values():  # the first processes' ids, in the first hello
            child.worker_id = fresh_worker_id(child.spec.id) if child.spec.fresh_ids else child.spec.id
        if self.controller is not None:
            identity = f"supervisor-{socket.gethostname()}-{os.getpid()}"
            self.notifier = _LostNotifier(self.controller, identity, self.endpoint_options, host=self.host,
                                          workers=self._worker_ids(), on_refused=self._tell_refused)
        threading.Thread(target=self._watch_loop, name="pbt-supervisor-watch", daemon=True).start()
        for child_id in self.children:
            self._start(child_id)
        self._write_state()

    def on_stop(self) -> None:
        self.stopping.set()
        self.watch_stop.set()
        for timer in self.timers:
            timer.cancel()
        _terminate_all([child.process for child in self.children.values()], self.stop_grace_s)
        if self.notifier is not None:
            self.notifier.stop()
        self._write_state(stopped=True)

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("host supervisor died: %s; terminating its workers", exception_value)
        self.on_stop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Refused):
            self._on_refused(message.reason)
        elif isinstance(message, _Exited):
            self._on_exit(message.child_id, message.exit_code)
        elif isinstance(message, _StartChild):
            self._start(message.child_id)
        elif isinstance(message, _Status):
            return self._infos()
        elif isinstance(message, _RefreshState):
            self._write_state()
        else:
            raise TypeError(f"HostSupervisorActor got an unknown message {message!r}")
        return None

    def _infos(self) -> list[ChildInfo]:
        return [ChildInfo(c.spec.id, c.state, getattr(c.process, "pid", None), c.starts, c.last_exit, c.reason,
                          c.since, c.worker_id) for c in self.children.values()]

    def _worker_ids(self) -> tuple[str, ...]:
        """The worker ids of the slots' current processes (what the host's ``hello`` lists)."""
        return tuple(c.worker_id or c.spec.id for c in self.children.values())

    def _write_state(self, *, stopped: bool = False) -> None:
        """Publish the children's state to ``state_path`` (atomically; never raises)."""
        if self.state_path is None:
            return
        state = {"v": HOST_STATE_VERSION, "host": self.host, "pid": os.getpid(), "updated_at": time.time(),
                 "refresh_s": HOST_STATE_REFRESH_S, "stopped": stopped,
                 "children": [asdict(info) for info in self._infos()]}
        try:
            write_atomically(self.state_path, json.dumps(state))
        except OSError as exc:
            if not self.state_write_failed:  # once: a full or read-only disk must not flood the log
                log.warning("cannot write the host state file %s: %s", self.state_path, exc)
            self.state_write_failed = True

    # --- life cycle of one child ------------------------------------------------------------
    def _tell_refused(self, reason: str) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Refused(reason))

    def _on_refused(self, reason: str) -> None:
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

    def _start(self, child_id: str) -> None:
        child = self.children[child_id]
        if self.refused is not None or self.stopping.is_set():
            return
        if child.state in ("gave_up", "exited") and child.starts:
            return
        if child.spec.fresh_ids and child.starts:
            # a restart: a worker id of its own, announced (the host's hello) before anything
            # can be said about it, so that the controller lets this supervisor report it lost
            # and never mixes it up with its dead predecessor
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
        with self.watch.lock:
            self.watch.processes[child_id] = child.process
        log.info("worker %s started as %s (pid %s, start #%d)", child_id, child.worker_id, child.process.pid,
                 child.starts)
        self._write_state()

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
                                             trial=running[0] if running is not None else None)
        restart = None
        if decision.restart:
            child.state, child.reason = "waiting", f"restarting in {decision.delay_s:.2f}s after {decision.reason}"
            if decision.explained:
                log.warning("worker %s died; restart in %.2fs, not counted against this host: %s", child_id,
                            decision.delay_s, decision.reason)
            else:
                log.warning("worker %s exited (code %s); restart in %.2fs", child_id, exit_code, decision.delay_s)
            restart = functools.partial(self._restart_later, child_id, decision.delay_s)
        if exit_code not in (0, EXIT_NO_CONTROLLER) and self.notifier is not None:  # (nobody to tell)
            # told from the notifier's thread, so that an unreachable controller (up to ~6 s of
            # resends) never blocks this actor; the restart waits for it, so that the controller
            # hears "lost" before the same worker id asks for new work
            self.notifier.tell(WorkerLost(worker_id, reason or f"process exited with code {exit_code}"), restart)
        elif restart is not None:
            restart()
        if decision.give_up:
            child.state, child.reason = "gave_up", decision.reason
            log.error("GIVING UP on worker %s: %s", child_id, decision.reason)
        elif not decision.restart:
            child.state, child.reason = "exited", decision.reason
        child.since = time.time()
        self._write_state()
        if all(c.state in ("exited", "gave_up") for c in self.children.values()):
            self.all_done.set()

    def _restart_later(self, child_id: str, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self._tell_start, args=(child_id,))
        timer.daemon = True
        self.timers.append(timer)  # a list append: safe from the notifier's thread too
        timer.start()

    def _tell_start(self, child_id: str) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_StartChild(child_id))

    def _watch_loop(self) -> None:
        refresh_at = time.monotonic() + HOST_STATE_REFRESH_S
        while not self.watch_stop.wait(WATCH_INTERVAL_S):
            if time.monotonic() >= refresh_at:  # the state file's heartbeat, even when nothing changed
                refresh_at = time.monotonic() + HOST_STATE_REFRESH_S
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_RefreshState())
            with self.watch.lock:
                exited = [(cid, p.poll()) for cid, p in self.watch.processes.items() if p.poll() is not None]
                for cid, _ in exited:
                    del self.watch.processes[cid]
            for cid, code in exited:
                try:
                    self.actor_ref.tell(_Exited(cid, code))
                except pykka.ActorDeadError:
                    return


@dataclass(frozen=True)
class _Announce:
    """For ``_LostNotifier``: the host's worker ids are now ``workers``."""

    workers: tuple[str, ...]


class _LostNotifier:
    """Tells the controller ``worker_lost`` from a thread of its own (which owns the DEALER).

    Each notice is tried 3 times (2 s apart) and then given up (the lease expires instead);
    ``after`` (the restart, if any) runs once the notice was answered or given up.

    It also says ``hello`` for the host (host id, worker ids) at once and every
    ``HOST_HELLO_S``: the controller then knows this connection owns those workers (only it may
    say they are lost), and refuses a second host with the same id. An answer in ``REFUSALS``
    (another live supervisor has this host id; the controller serves another run than the one
    this host joined) goes to ``on_refused`` and the hellos stop. ``run`` is learned from the
    first ``ack`` and sent in every later message. ``announce`` replaces the worker ids (a
    slot restarted under a new id) and says ``hello`` with them at once, in turn with the
    notices: a ``worker_lost`` told after it is sent after that ``hello``.
    """

    TRIES = 3
    TIMEOUT_S = 2.0

    def __init__(self, controller: str, identity: str, endpoint_options: Mapping[str, Any], *, host: str = "",
                 workers: tuple[str, ...] = (), on_refused: Callable[[str], None] | None = None) -> None:
        self.controller, self.identity, self.endpoint_options = controller, identity, dict(endpoint_options)
        self.host, self.workers, self.on_refused = host, workers, on_refused
        self.run = ""
        self.refused: str | None = None
        self.queue: queue.Queue[tuple[WorkerLost, Callable[[], None] | None] | _Announce | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pbt-supervisor-notifier", daemon=True)
        self.thread.start()

    def tell(self, message: WorkerLost, after: Callable[[], None] | None) -> None:
        self.queue.put((message, after))

    def announce(self, workers: tuple[str, ...]) -> None:
        """The host's worker ids are now ``workers``: say ``hello`` with them (in turn)."""
        self.queue.put(_Announce(tuple(workers)))

    def stop(self, timeout_s: float = 3.0) -> None:
        self.stopping.set()
        self.queue.put(None)
        self.thread.join(timeout_s)

    def _run(self) -> None:
        endpoint = WorkerEndpoint(self.controller, self.identity, **self.endpoint_options)
        next_hello = time.monotonic()
        try:
            while True:
                if self.workers and self.refused is None and time.monotonic() >= next_hello:
                    self._hello(endpoint)
                    next_hello = time.monotonic() + HOST_HELLO_S
                try:
                    item = self.queue.get(timeout=max(0.0, next_hello - time.monotonic())
                                          if self.workers and self.refused is None else None)
                except queue.Empty:
                    continue
                if item is None:
                    break
                if isinstance(item, _Announce):
                    self.workers = item.workers
                    if self.refused is None:
                        self._hello(endpoint)
                        next_hello = time.monotonic() + HOST_HELLO_S
                    continue
                message, after = item
                if self.run:
                    message = WorkerLost(message.worker, message.reason, self.run)
                self._notify(endpoint, message)
                if after is not None and not self.stopping.is_set():
                    after()
        finally:
            endpoint.close()

    def _hello(self, endpoint: WorkerEndpoint) -> None:
        hello = Hello(self.identity, self.host, os.getpid(), "", self.run, self.workers)
        try:
            reply = endpoint.request(hello, timeout_s=self.TIMEOUT_S, retries=0)
        except RequestTimeout:
            return  # the controller is not up (yet): try again later
        if isinstance(reply, Ack) and reply.run:
            self.run = reply.run
        elif isinstance(reply, Error) and reply.code in REFUSALS:
            self.refused = reply.message
            if self.on_refused is not None:
                self.on_refused(f"{reply.code}: {reply.message}")

    def _notify(self, endpoint: WorkerEndpoint, message: WorkerLost) -> None:
        for _ in range(self.TRIES):
            if self.stopping.is_set():
                return
            try:
                endpoint.request(message, timeout_s=self.TIMEOUT_S, retries=0)
                return
            except RequestTimeout:
                continue
        log.warning("controller did not hear that %s was lost; the lease will expire instead", message.worker)


class HostSupervisor:
    """Handle for a running ``HostSupervisorActor``."""

    def __init__(self, children: Sequence[ChildSpec], **options: Any) -> None:
        self._stopping = threading.Event()
        self._stop_grace_s = float(options.get("stop_grace_s", STOP_GRACE_S))
        self.ref = HostSupervisorActor.start(children, stopping=self._stopping, **options)
        self._done: threading.Event = self.ref.proxy().all_done.get()

    def begin_stop(self) -> None:
        """From now on no worker is (re)started. Safe in a signal handler (it sets an event):
        a cluster manager's SIGTERM reaches the host and its workers at once, and a worker that
        exits before ``stop`` runs must not be restarted in between."""
        self._stopping.set()

    def status(self) -> list[ChildInfo]:
        info = cast(list[ChildInfo], self.ref.ask(_Status(), timeout=10))
        return info

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once every child exited for good (done, or given up)."""
        return self._done.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still running ``stop_grace_s`` later, and stop."""
        self.begin_stop()
        if self.ref.is_alive():
            self.ref.stop(timeout=self._stop_grace_s + 30)


# --- the host state files that `pbt-actors status` shows ------------------------------------------
def host_state_path(checkpoint_root: str | os.PathLike[str], host: str) -> Path:
    """Where the supervisor of ``host`` publishes its children's state (see the module doc)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host) or "host"
    return local_state_folder(checkpoint_root) / HOST_STATE_DIR / f"supervisor-{safe}.json"


def read_host_states(checkpoint_root: str | os.PathLike[str], now: float | None = None) -> list[dict[str, Any]]:
    """Every host state file under ``checkpoint_root``, by host name; unreadable ones skipped.

    Each gets ``lost``: True when its supervisor did not stop but has not rewritten the file for
    ``HOST_LOST_AFTER`` of its refresh intervals (it died unannounced); then its children that
    it last saw running or waiting are in state ``lost`` (their processes were its children).
    """
    now = time.time() if now is None else now
    folder = local_state_folder(checkpoint_root) / HOST_STATE_DIR  # a URL root: this host's local folder
    states = []
    for path in sorted(folder.glob("supervisor-*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("children"), list):
            states.append(_judge_lost(state, now))
    return sorted(states, key=lambda s: str(s.get("host")))


def _judge_lost(state: dict[str, Any], now: float) -> dict[str, Any]:
    refresh, updated = state.get("refresh_s"), state.get("updated_at")
    lost = (not state.get("stopped") and isinstance(refresh, (int, float)) and isinstance(updated, (int, float))
            and now - updated > HOST_LOST_AFTER * refresh)  # files without refresh_s: no heartbeat to judge by
    state["lost"] = bool(lost)
    if lost:
        for child in state["children"]:
            if isinstance(child, dict) and child.get("state") in ("running", "waiting", "starting"):
                child["state"], child["reason"] = "lost", "its host supervisor stopped updating its state"
    return state


def describe_host_states(states: Sequence[Mapping[str, Any]], now: float | None = None) -> list[str]:
    """Human lines for ``status``: one per worker slot, with the reason when it is not running."""
    now = time.time() if now is None else now
    lines = []
    for state in states:
        age = max(0.0, now - float(state.get("updated_at", now)))
        stopped = " (supervisor stopped)" if state.get("stopped") else ""
        if state.get("lost"):
            stopped = f" (LOST: no heartbeat for {age:.0f}s; its workers are gone)"
        lines.append(f"host {state.get('host')}  supervisor pid {state.get('pid')}  updated {age:.0f}s ago{stopped}")
        for child in state["children"]:
            line = f"  worker {child.get('id')}  {child.get('state')}  starts {child.get('starts')}"
            if child.get("worker") and child.get("worker") != child.get("id"):
                line += f"  as {child.get('worker')}"
            if child.get("last_exit") is not None:
                line += f"  last exit {child.get('last_exit')}"
            if child.get("state") != "running" and child.get("reason"):
                line += f": {child.get('reason')}"
            lines.append(line)
    return lines


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


__all__ = ["Backoff", "ChildSpec", "HostSupervisor", "HostSupervisorActor", "Intensity", "Restart",
           "describe_host_states", "host_state_path", "read_host_states"]
