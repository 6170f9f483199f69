"""The controller shell: a pykka actor around ``ControllerCore`` and a ZeroMQ bridge thread.

Layer 4. ``ControllerActor`` serialises all access to the core (and so to the LMDB write
transaction, which must stay on one thread: the actor's). The **bridge** thread owns the
ROUTER socket: it drains up to a few hundred requests per poll, hands them to the actor as
*one* batch (one LMDB commit, one fsync), and sends the replies only after that commit, so
every ``ack`` a worker sees is durable. A periodic tick expires leases.

``Controller.start(...)`` is the embedding API: it returns a ``ControllerHandle`` with the
bound endpoint, ``wait(timeout)`` and ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pykka

from pbt_actors.control.core import ControllerCore, best_completed
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.base import TrialStore
from pbt_actors.transport.endpoints import ControllerEndpoint
from pbt_actors.transport.messages import Done, Error, Fail, Message, Reply, Report, RequestTrial, Wait, WorkerLost
from pbt_actors.transport.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

TICK_S = 0.25
POLL_S = 0.05
PARK_S = 2.0
"""How long a ``request_trial`` answered ``wait`` is held (long poll) before the worker is told
``wait(0)`` and asks again: well inside a worker's request timeout, so it never resends."""
REPLY_CACHE_PEERS = 4096
"""Peers whose last reply is cached (least recently used first out): bounded, so that a flood
from ever new identities cannot grow the controller's memory without limit."""


@dataclass(frozen=True)
class StatusSnapshot:
    """A consistent summary of the run, read on the actor's thread."""

    total: int
    by_status: dict[str, int]
    best: Trial | None
    running_workers: list[str]
    finished: bool


class ControllerActor(pykka.ThreadingActor):
    """Serialises the core. The store is opened in ``on_start`` (LMDB: on this thread)."""

    def __init__(self, open_store: Callable[[], TrialStore], experiment: Experiment | None,
                 clock: Callable[[], float] = time.time, startup_errors: list[BaseException] | None = None) -> None:
        super().__init__()
        self.open_store = open_store
        self.experiment = experiment
        self.clock = clock
        self.core: ControllerCore | None = None
        self.startup_errors = startup_errors if startup_errors is not None else []

    def on_start(self) -> None:
        # A failure here (unwritable store folder, another experiment's store, ...) is the
        # user's to fix, not a crash: it is kept and raised to whoever asks first (the
        # ``Controller.start`` caller, who then stops this actor), instead of letting pykka
        # log it as an unhandled actor exception with a traceback.
        try:
            store = self.open_store()
            try:
                self.core = ControllerCore(store, self.experiment, now=self.clock())
            except BaseException:
                store.close()
                raise
        except Exception as exc:
            self.startup_errors.append(exc)
        except BaseException as exc:  # pykka runs neither on_failure nor on_stop for this
            self.startup_errors.append(exc)
            raise

    def on_stop(self) -> None:
        if self.core is not None:
            self.core.store.close()

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("controller actor died: %s", exception_value)
        if self.core is not None:
            self.core.store.close()

    def on_receive(self, message: Any) -> Any:
        if self.core is None:
            raise self.startup_errors[-1] if self.startup_errors else RuntimeError("controller has no store")
        if isinstance(message, _HandleBatch):
            return self.core.handle_batch(message.messages, self.clock())
        if isinstance(message, _Tick):
            return self.core.tick(self.clock())
        if isinstance(message, _Status):
            return self._status()
        raise TypeError(f"ControllerActor got an unknown message {message!r}")

    def _status(self) -> StatusSnapshot:
        assert self.core is not None
        store = self.core.store
        running = [t.lease.worker for t in store.trials(store.ids_with_status(TrialStatus.RUNNING)) if t.lease]
        return StatusSnapshot(
            total=store.count(), by_status={s.value: store.count(s) for s in TrialStatus},
            best=best_completed(store, self.core.experiment), running_workers=sorted(running),
            finished=self.core.finished,
        )


@dataclass(frozen=True)
class _Parked:
    """A held request for work (see ``_Bridge.parked``)."""

    request_id: int
    worker: str
    since: float


@dataclass(frozen=True)
class _HandleBatch:
    messages: list[Message]


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass(frozen=True)
class _Status:
    pass


class _Bridge(threading.Thread):
    """Owns the ROUTER socket (created on this thread) and pumps requests to the actor."""

    def __init__(self, actor: pykka.ActorRef[ControllerActor], bind: str, endpoint_options: dict[str, Any]) -> None:
        super().__init__(name="pbt-controller-bridge", daemon=True)
        self.actor = actor
        self.bind = bind
        self.endpoint_options = endpoint_options
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.address: str | None = None
        self.startup_error: BaseException | None = None
        self.bad_input = RateLimitedLog(log)
        """One log line per kind of rejected input (the error code) per window, however many."""
        self.last_reply: OrderedDict[bytes, tuple[int, Reply]] = OrderedDict()
        """Per peer, its last request id and our reply: a resend of the same request (its reply
        was lost or late) gets the same answer instead of being handled twice (zguide's
        idempotent-service pattern). In memory only: after a restart, re-handling is safe.
        At most ``REPLY_CACHE_PEERS`` peers (LRU)."""
        self.parked: dict[bytes, _Parked] = {}
        """Long poll: per peer, a request for work that the core answered ``wait``. Instead of
        sending that (the worker would sleep, then ask again), the request is handed to the core
        again with the next batch that can have created work or finished the run, and answered
        as soon as the answer is not ``wait`` (or after ``PARK_S``). Idle workers start the
        moment a trial appears and hear ``done`` the moment the run ends."""
        self.parked_requeued: dict[bytes, _Parked] = {}
        self.peers_seen: set[str] = set()
        """Peers that got a non-error answer: the workers to tell ``done`` before exiting (a
        peer that only ever sent rejected input is nobody's worker and is not waited for)."""
        self.peers_done: set[str] = set()

    def run(self) -> None:
        try:
            endpoint = ControllerEndpoint(self.bind, **self.endpoint_options)
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            return
        self.address = endpoint.endpoint
        self.ready.set()
        next_tick = time.monotonic() + TICK_S
        try:
            while not self.stop_event.is_set():
                incoming = endpoint.recv_batch(POLL_S)
                if incoming:
                    self._serve(endpoint, incoming)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    try:
                        released = self.actor.ask(_Tick(), timeout=30)
                    except pykka.ActorDeadError:
                        log.error("controller actor is gone; bridge stops")
                        return
                    if released and self.parked:
                        self._serve(endpoint, [], unpark=True)
                    self._release_overdue(endpoint)
        finally:
            endpoint.close()

    def _serve(self, endpoint: ControllerEndpoint, incoming: list[Any], *, unpark: bool = False) -> None:
        batch: list[tuple[bytes, int, Message]] = []
        for item in incoming:
            if item.error is not None:  # the endpoint has logged it (once per kind per window)
                if item.request_id is not None:
                    endpoint.send(item.identity, item.request_id, Error(item.error.code, str(item.error)))
                continue
            message = item.message
            parked = self.parked.get(item.identity)
            if parked is not None:
                if parked.request_id == item.request_id:
                    continue  # a resend of a request we are holding: its answer is coming
                del self.parked[item.identity]  # the peer moved on (restarted): drop the old one
            cached = self.last_reply.get(item.identity)
            if cached is not None and cached[0] == item.request_id:
                endpoint.send(item.identity, item.request_id, cached[1])
                continue
            sender = item.identity.decode("utf-8", "replace")
            claimed = getattr(message, "worker", None)
            if claimed is not None and claimed != sender and not isinstance(message, WorkerLost):
                self.bad_input.warning("not_leaseholder", "rejected %s from %r: not_leaseholder: it claims to be "
                                       "worker %r", getattr(message, "TYPE", "?"), sender[:64], claimed[:64])
                endpoint.send(item.identity, item.request_id, Error("not_leaseholder",
                                                                    f"body worker {claimed!r} is not the sender"))
                continue
            if isinstance(message, WorkerLost):
                self.peers_seen.discard(message.worker)
                self.parked.pop(message.worker.encode("utf-8"), None)
            batch.append((item.identity, item.request_id, message))
        if self.parked and (unpark or any(isinstance(m, Report | Fail | WorkerLost) for _, _, m in batch)):
            # a result or a lost worker can create work or end the run: ask again for every held
            # request (rarer causes, an early stop on a heartbeat, wait for PARK_S at most)
            batch.extend((identity, p.request_id, RequestTrial(p.worker)) for identity, p in self.parked.items())
            self.parked_requeued = {identity: p for identity, p in self.parked.items()}
            self.parked.clear()
        else:
            self.parked_requeued = {}
        if not batch:
            return
        try:
            replies = cast(list[Reply], self.actor.ask(_HandleBatch([m for _, _, m in batch]), timeout=60))
        except Exception as exc:  # the actor is the one that must never die of input
            log.exception("controller failed a batch of %d requests", len(batch))
            replies = [Error("internal", f"{type(exc).__name__}: {exc}") for _ in batch]
        for (identity, request_id, message), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Wait) and (isinstance(message, RequestTrial)
                                            or (isinstance(message, Report) and message.next)):
                previous = self.parked_requeued.get(identity)
                since = previous.since if previous is not None and previous.request_id == request_id \
                    else time.monotonic()
                self.parked[identity] = _Parked(request_id, message.worker, since)
                continue
            self._answer(endpoint, identity, request_id, message, reply)

    def _release_overdue(self, endpoint: ControllerEndpoint) -> None:
        """Answer requests held for ``PARK_S`` with ``wait(0)``: the worker asks again at once."""
        now = time.monotonic()
        for identity, parked in [(i, p) for i, p in self.parked.items() if now - p.since >= PARK_S]:
            del self.parked[identity]
            self._answer(endpoint, identity, parked.request_id, RequestTrial(parked.worker), Wait(0.0))

    def _answer(self, endpoint: ControllerEndpoint, identity: bytes, request_id: int, message: Message,
                reply: Reply) -> None:
        endpoint.send(identity, request_id, reply)
        self.last_reply[identity] = (request_id, reply)
        self.last_reply.move_to_end(identity)
        if len(self.last_reply) > REPLY_CACHE_PEERS:
            self.last_reply.popitem(last=False)
        sender = identity.decode("utf-8", "replace")
        if isinstance(reply, Error):
            self.bad_input.warning(reply.code, "rejected %s from %r: %s: %s", getattr(message, "TYPE", "?"),
                                   sender[:64], reply.code, reply.message[:200])
        elif not isinstance(message, WorkerLost):
            self.peers_seen.add(sender)
        if isinstance(reply, Done):
            self.peers_done.add(sender)


class ControllerHandle:
    """A running controller embedded in this process."""

    def __init__(self, actor: pykka.ActorRef[ControllerActor], bridge: _Bridge) -> None:
        self.actor = actor
        self.bridge = bridge

    @property
    def endpoint(self) -> str:
        assert self.bridge.address is not None
        return self.bridge.address

    def peers_not_done(self) -> set[str]:
        """Workers that talked to us but have not been told ``done`` yet (for a clean exit)."""
        return set(self.bridge.peers_seen) - set(self.bridge.peers_done)

    def status(self, timeout_s: float = 30) -> StatusSnapshot:
        snapshot = cast(StatusSnapshot, self.actor.ask(_Status(), timeout=timeout_s))
        return snapshot

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2) -> bool:
        """Block until the experiment has finished (True) or the timeout passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            if self.status().finished:
                return True
            self.bridge.stop_event.wait(poll_s)
        return False

    def stop(self) -> None:
        self.bridge.stop_event.set()
        self.bridge.join(timeout=10)
        if self.actor.is_alive():
            self.actor.stop(timeout=30)


class Controller:
    """Embedding API: ``Controller.start(experiment, store_dir, bind)``."""

    @staticmethod
    def start(experiment: Experiment | None, store: str | Path | Callable[[], TrialStore],
              bind: str = "tcp://127.0.0.1:0", *, endpoint_options: dict[str, Any] | None = None,
              clock: Callable[[], float] = time.time) -> ControllerHandle:
        """Open (or resume) the store, start the actor and the bridge, return a handle.

        ``store`` is a folder (an LMDB store is created or resumed there) or a factory
        returning any ``TrialStore`` (called on the actor's thread).
        """
        if callable(store):
            open_store = store
        else:
            path = Path(store)

            def open_store() -> TrialStore:
                from pbt_actors.storage.lmdb_store import LmdbTrialStore

                return LmdbTrialStore(path)

        errors: list[BaseException] = []
        actor = ControllerActor.start(open_store, experiment, clock, errors)
        try:
            actor.ask(_Status(), timeout=60)
        except pykka.ActorDeadError:
            raise errors[0] if errors else RuntimeError("controller failed to start (see log)") from None
        except BaseException:  # the store could not be opened: its error, and no actor left behind
            if actor.is_alive():
                actor.stop(timeout=30)
            raise
        bridge = _Bridge(actor, bind, dict(endpoint_options or {}))
        bridge.start()
        bridge.ready.wait(30)
        if bridge.startup_error is not None:
            actor.stop()
            raise bridge.startup_error
        return ControllerHandle(actor, bridge)
