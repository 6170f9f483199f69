"""The protocol session: the controller's per-peer rules of the wire protocol, as a pure class.

Layer 3. ``ControllerCore`` decides what each request *means* (leases, reports, policies);
the session decides *how a conversation with a peer goes* (docs/protocol.md §4–5), composing
one module per rule:

* **Reply cache** (here) — per peer, its last request id and our reply. A resend under the same
  id (the reply was lost or late) gets the same answer instead of being handled twice (zguide's
  idempotent-service pattern). In memory only: after a controller restart, handling a resend
  afresh is safe (§5's table).
* **Who may speak for whom** (``peer_identity.py``) — the sender check, always; the run
  identity, host ownership and key binding with ``run_id`` (the networked controller).
* **Long poll** (``long_poll.py``) — a ``request_trial`` (or ``report`` with ``next``) that the
  core answers ``wait`` is *held* instead: it goes to the core again with every later batch that
  can have created work or ended the run (one holding a ``report``, ``fail`` or ``worker_lost``,
  or after a lease expiry) and is answered as soon as the answer is not ``wait``; after
  ``park_s`` it is answered ``wait(0)`` and the worker asks again at once. A resend of a held
  request is dropped (its answer is coming), a new request from the same peer replaces the held
  one (the peer moved on), ``worker_lost`` drops the lost worker's.
* **Clean exit** (``clean_exit.py``) — which peers got a non-error answer and which were told
  ``done``, so the controller can linger until every worker heard ``done``.
* **Rejections are logged rate-limited** — one line per error code per window, so a hostile
  flood cannot flood the log.

Every per-peer structure is a ``common.bounded_lru.BoundedLru`` (least recently used out first):
``cache_peers`` replies, ``max_peers`` seen/done peers and held requests (past it the oldest is
answered ``wait(0)`` early), ``max_hosts`` hosts, ``max_owned`` owned and key-bound ids.

Why a class of its own: plain data structures and an injected clock (every method takes
``now``; when omitted, ``clock()`` is read), with no sockets, threads or actors, so the bridge
(``runtime/controller/controller_actor.py``, wall-clock monotonic time), the simulator
(``tools/sim/engine.py``, virtual time) and unit tests all run the same code.

One round with the core::

    step = session.receive([(peer, request_id, message), ...])
    send(step.send)                                   # cached replies, rejections: now
    if step.messages:                                 # the batch for ControllerCore
        replies = core.handle_batch(step.messages, now)
        send(session.answer(step, replies, now))      # the rest; ``wait`` ones are held
    ...
    step = session.tick(now, released=bool(core.tick(now)))   # periodically, same round

``serve(step, handle, now)`` does the middle part given a ``handle(messages) -> replies``.
Not thread-safe: one caller at a time (the bridge thread); ``peers_not_done`` may be read
from another thread (it copies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, KeysView, Mapping, Sequence
from typing import NamedTuple

from pbt_actors.common.bounded_lru import BoundedLru
from pbt_actors.control.clean_exit import MAX_TRACKED_PEERS, AnsweredPeers
from pbt_actors.control.long_poll import HeldRequests, Parked
from pbt_actors.control.peer_identity import (
    HOST_LEASE_S,
    MAX_HOSTS,
    MAX_OWNED_WORKERS,
    PeerIdentityRules,
    sender_mismatch,
)
from pbt_actors.model.protocol import (
    Error,
    Fail,
    Hello,
    Message,
    Reply,
    Report,
    RequestTrial,
    Wait,
    WorkerLost,
)
from pbt_actors.transport.ratelimit import RateLimitedLog

__all__ = ["HOST_LEASE_S", "PARK_S", "Outgoing", "Parked", "PeerRequest", "ProtocolSession", "Round"]

log = logging.getLogger(__name__)

PARK_S = 2.0
"""How long a request answered ``wait`` is held (long poll) before the worker is told
``wait(0)`` and asks again: well inside a worker's request timeout, so it never resends."""
REPLY_CACHE_PEERS = 4096
"""Peers whose last reply is cached (least recently answered first out)."""

PeerRequest = tuple[bytes, int, Message]
"""``(peer, request_id, message)``: a decoded request. ``peer`` is the routing identity."""


class Outgoing(NamedTuple):
    """A reply to send: ``endpoint.send(*outgoing)`` takes it as is."""

    peer: bytes
    request_id: int
    reply: Reply


class Round:
    """One exchange with the core, from ``receive`` or ``tick`` to ``answer``.

    ``send``: answers to send at once (cached replies, rejections, overdue ``wait(0)``).
    ``messages``: the batch to hand to ``ControllerCore.handle_batch`` (possibly empty); its
    replies go back through ``ProtocolSession.answer`` in the same order.
    """

    __slots__ = ("_requests", "_requeued", "messages", "send")

    def __init__(self, send: list[Outgoing], requests: list[PeerRequest], requeued: Mapping[bytes, Parked]) -> None:
        self.send = send
        self._requests = requests
        self.messages: list[Message] = [m for _, _, m in requests]
        self._requeued = requeued

    def __repr__(self) -> str:
        return f"Round(send={self.send!r}, messages={self.messages!r})"


_NOTHING_REQUEUED: Mapping[bytes, Parked] = {}


class ProtocolSession:
    """The per-peer protocol state of one controller (see the module docstring).

    Args:
        park_s: how long a ``wait`` is held before ``wait(0)``; ``None``: the module's
            ``PARK_S``, read at each use (tests shorten it); ``0``: no long poll at all (the
            core's ``wait`` is sent as is, the behaviour of a controller without it).
        cache_peers: how many peers' last replies are kept.
        clock: the time source when a method is called without ``now`` (the bridge:
            ``time.monotonic``; the simulator: its virtual clock). Also times the log's
            rate-limit windows.
        logger: where rejected input is logged (rate-limited); ``None``: not logged (the
            simulator counts its errors itself).
        run_id: this controller's run id: turns on the run-identity and host-ownership rules
            (the networked controller). ``None``: off (the simulator, whose virtual peers are
            trusted; most unit tests of the other rules).
        host_lease_s: how long a supervisor's claim on its host id outlives its last ``hello``.
        max_peers: cap of the seen/done peer sets and of held requests.
        max_hosts, max_owned: caps of the host and owned-worker (and bound-key) tables.
    """

    def __init__(self, *, park_s: float | None = None, cache_peers: int = REPLY_CACHE_PEERS,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = log,
                 run_id: str | None = None, host_lease_s: float = HOST_LEASE_S,
                 max_peers: int = MAX_TRACKED_PEERS, max_hosts: int = MAX_HOSTS,
                 max_owned: int = MAX_OWNED_WORKERS, experiment_file: tuple[str, str] = ("", "")) -> None:
        if cache_peers < 1:
            raise ValueError("cache_peers must be >= 1")
        if park_s is not None and park_s < 0:
            raise ValueError("park_s must be >= 0")
        self._park_s = park_s
        self.clock = clock
        self.rejections = RateLimitedLog(logger, clock=clock) if logger is not None else None
        """One log line per kind of rejected input (the error code) per window, however many."""
        self._last_reply: BoundedLru[bytes, tuple[int, Reply]] = BoundedLru(cache_peers)
        self._held = HeldRequests(max_peers)
        self._answered = AnsweredPeers(max_peers)
        self.run_id = run_id
        self._identity = (PeerIdentityRules(run_id, host_lease_s=host_lease_s, max_hosts=max_hosts,
                                            max_owned=max_owned, experiment_file=experiment_file)
                          if run_id is not None else None)
        self.held_total = 0
        """How many times a request was newly held (for the simulator's statistics)."""

    # --- state, read-only ---------------------------------------------------------------------
    @property
    def park_s(self) -> float:
        return PARK_S if self._park_s is None else self._park_s

    @park_s.setter
    def park_s(self, value: float | None) -> None:
        self._park_s = value

    @property
    def parked(self) -> dict[bytes, Parked]:
        """A copy of the held requests, by peer."""
        return dict(self._held.items())

    @property
    def peers_seen(self) -> KeysView[str]:
        """Peers that got a non-error answer (a live, set-like view)."""
        return self._answered.seen

    @property
    def peers_done(self) -> KeysView[str]:
        """Peers that were answered ``done`` (a live, set-like view)."""
        return self._answered.done

    def sizes(self) -> dict[str, int]:
        """How many entries each per-peer structure holds (all bounded; for tests and stats)."""
        identity = self._identity.sizes() if self._identity is not None else {"hosts": 0, "owners": 0, "keys": 0}
        return {"reply_cache": len(self._last_reply), "parked": len(self._held),
                "peers_seen": len(self._answered.seen), "peers_done": len(self._answered.done), **identity}

    def host_owner(self, host: str) -> bytes | None:
        """The supervisor peer bound to ``host`` (None: none, or its claim lapsed)."""
        return self._identity.host_owner(host, self.clock()) if self._identity is not None else None

    def cached(self, peer: bytes) -> tuple[int, Reply] | None:
        """The peer's last request id and our reply to it, if still cached."""
        return self._last_reply.get(peer)

    def next_deadline(self) -> float | None:
        """When the oldest held request falls due for ``wait(0)`` (None: nothing held)."""
        return self._held.next_deadline(self.park_s)

    def peers_not_done(self, now: float | None = None) -> set[str]:
        """Peers that talked to us but have not been told ``done`` yet (for a clean exit), less
        those silent for ``clean_exit.SILENT_S`` (at ``now``, default ``clock()``)."""
        return self._answered.not_done(self.clock() if now is None else now)

    # --- a round ------------------------------------------------------------------------------
    def receive(self, requests: Iterable[PeerRequest], now: float | None = None, *,
                keys: Mapping[bytes, str] | None = None) -> Round:
        """Sort decoded requests into answers to send now and the batch for the core.

        Only host claims depend on time here (``now``, default ``clock()``); holding and
        releasing do too (``answer``, ``tick``). ``keys``: peer -> the key its connection
        authenticated with (CURVE; the key-binding rule), for the peers that have one.
        """
        send: list[Outgoing] = []
        batch: list[PeerRequest] = []
        in_batch: dict[bytes, int] = {}
        held = self._held
        last_reply = self._last_reply
        identity = self._identity
        wakes = False
        for peer, request_id, message in requests:
            parked = held.get(peer)
            if parked is not None:
                if parked.request_id == request_id:
                    continue  # a resend of a request we are holding: its answer is coming
                held.pop(peer)  # the peer moved on (restarted): drop the old one
            if in_batch.get(peer) == request_id:
                continue  # a resend that arrived with the original: answered once, below
            cached = last_reply.get(peer)
            if cached is not None and cached[0] == request_id:
                send.append(Outgoing(peer, request_id, cached[1]))
                continue
            refusal = None
            if identity is not None:
                refusal = identity.check(peer, message, self.clock() if now is None else now,
                                         keys.get(peer, "") if keys else "")
            if refusal is None:
                refusal = sender_mismatch(peer, message)
            if refusal is not None:
                self._log_rejection(peer, message, refusal)  # not cached: a resend is checked afresh
                send.append(Outgoing(peer, request_id, refusal))
                continue
            if isinstance(message, Report | Fail | WorkerLost):
                wakes = True
                if isinstance(message, WorkerLost):
                    self._answered.forget(message.worker)
                    held.pop(message.worker.encode("utf-8"))
            in_batch[peer] = request_id
            batch.append((peer, request_id, message))
        # a result or a lost worker can create work or end the run: ask again for every held
        # request (rarer causes, e.g. an early stop on a heartbeat, wait for park_s at most)
        return self._round(send, batch, requeue=wakes)

    def answer(self, step: Round, replies: Sequence[Reply], now: float | None = None) -> list[Outgoing]:
        """Take the core's replies to ``step.messages``: what to send now; ``wait``s are held."""
        now = self.clock() if now is None else now
        park_s = self.park_s
        out: list[Outgoing] = []
        requeued = step._requeued  # the round is this class's own record
        for (peer, request_id, message), core_reply in zip(step._requests, replies, strict=True):
            reply = core_reply
            if park_s > 0 and isinstance(reply, Wait) and (
                    isinstance(message, RequestTrial) or (isinstance(message, Report) and message.next)):
                previous = requeued.get(peer)
                if previous is None or previous.request_id != request_id:
                    self.held_total += 1
                    self._hold(out, peer, Parked(request_id, message.worker, now))
                    continue
                if now < previous.since + park_s:  # the form next_deadline() uses: exact at the deadline
                    self._hold(out, peer, previous)
                    continue
                reply = Wait(0.0)  # held long enough: the worker asks again at once
            out.append(self._record(peer, request_id, message, reply))
        return out

    def serve(self, step: Round, handle: Callable[[list[Message]], Sequence[Reply]],
              now: float | None = None) -> list[Outgoing]:
        """``step.send``, then the core's answers: ``handle(step.messages)`` (if any) through
        ``answer``. For callers that can call the core in line (the simulator, tests)."""
        if not step.messages:
            return step.send
        return [*step.send, *self.answer(step, handle(step.messages), now)]

    def tick(self, now: float | None = None, *, released: bool = False) -> Round:
        """The periodic round: after the core's lease expiry released trials (``released``),
        every held request goes back to the core; otherwise the ones held ``park_s`` are
        answered ``wait(0)`` (in ``send``)."""
        now = self.clock() if now is None else now
        if released and self._held:
            return self._round([], [], requeue=True)  # overdue ones still waiting: answer() says wait(0)
        return Round(self.release_overdue(now), [], _NOTHING_REQUEUED)

    def release_overdue(self, now: float | None = None) -> list[Outgoing]:
        """Answer requests held for ``park_s`` with ``wait(0)``: the worker asks again at once."""
        if not self._held:
            return []
        now = self.clock() if now is None else now
        return [self._record(peer, parked.request_id, RequestTrial(parked.worker), Wait(0.0))
                for peer, parked in self._held.take_overdue(now, self.park_s)]

    # --- internals ------------------------------------------------------------------------------------
    def _round(self, send: list[Outgoing], batch: list[PeerRequest], *, requeue: bool) -> Round:
        if requeue and self._held:
            requeued = self._held.take_all()
            batch.extend((peer, p.request_id, RequestTrial(p.worker)) for peer, p in requeued.items())
            return Round(send, batch, requeued)
        return Round(send, batch, _NOTHING_REQUEUED)

    def _hold(self, out: list[Outgoing], peer: bytes, parked: Parked) -> None:
        """Hold a request; past ``max_peers`` held, the one held longest is answered ``wait(0)`` now."""
        for shed_peer, shed in self._held.put(peer, parked):
            out.append(self._record(shed_peer, shed.request_id, RequestTrial(shed.worker), Wait(0.0)))

    def _log_rejection(self, peer: bytes, message: Message, error: Error) -> None:
        if self.rejections is not None:
            self.rejections.warning(error.code, "rejected %s from %r: %s: %s", getattr(message, "TYPE", "?"),
                                    peer.decode("utf-8", "replace")[:64], error.code, error.message[:200])

    def _record(self, peer: bytes, request_id: int, message: Message, reply: Reply) -> Outgoing:
        """Cache the reply we are about to send and account for it."""
        self._last_reply.put(peer, (request_id, reply))
        if isinstance(reply, Error):
            self._log_rejection(peer, message, reply)
        elif not isinstance(message, WorkerLost):
            self._answered.answered(peer.decode("utf-8", "replace"), reply,
                                    message.workers if isinstance(message, Hello) and message.workers else None,
                                    self.clock())
        return Outgoing(peer, request_id, reply)
