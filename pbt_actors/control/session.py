"""The protocol session: the controller's per-peer rules of the wire protocol, as a pure class.

Layer 3. ``ControllerCore`` decides what each request *means* (leases, reports, policies);
the session decides *how a conversation with a peer goes* (docs/protocol.md §4–5):

* **Reply cache** — per peer, its last request id and our reply. A resend under the same id
  (the reply was lost or late) gets the same answer instead of being handled twice (zguide's
  idempotent-service pattern), at most ``cache_peers`` peers, least recently answered out
  first, so a flood of ever new identities cannot grow memory without bound. In memory only:
  after a controller restart, handling a resend afresh is safe (§5's table).
* **Sender check** — a body ``worker`` that is not the sending peer is refused
  ``not_leaseholder`` before the core sees it (``worker_lost`` is exempt: a supervisor speaks
  about another worker by design).
* **Long poll** — a ``request_trial`` (or ``report`` with ``next``) that the core answers
  ``wait`` is *held* (parked) instead: it goes to the core again with every later batch that
  can have created work or ended the run (one holding a ``report``, ``fail`` or
  ``worker_lost``, or after a lease expiry) and is answered as soon as the answer is not
  ``wait``; after ``park_s`` it is answered ``wait(0)`` and the worker asks again at once.
  A resend of a held request is dropped (its answer is coming), a new request from the same
  peer replaces the held one (the peer moved on), ``worker_lost`` drops the lost worker's.
* **Run identity** (with ``run_id``, the networked controller; DESIGN §10) — a request that
  names another run than ``run_id`` is refused ``wrong_run`` (the worker then exits: it belongs
  to an older or another store's run); ``""`` means "not known yet" (a first ``hello``).
* **Host ownership** (with ``run_id``) — a host supervisor says ``hello`` with its host id and
  its worker ids (``Hello.workers``) and repeats it every few seconds; while it does (within
  ``host_lease_s``), another peer's ``hello`` for that host id, or for one of those worker ids
  as a supervisor, is refused ``host_taken``, and ``worker_lost`` is accepted only from the
  supervisor that owns that worker (else ``not_owner``).
* **Key binding** (with ``run_id`` and CURVE: the bridge passes each sender's key, the ZAP
  ``User-Id`` = its public key) — the first key heard for a worker id (the sender's routing
  id, and for a supervisor's ``hello`` also its host id and its ``workers``) is bound to it;
  anything from that id, or a ``hello`` claiming it, with another key is refused ``not_owner``.
  So a second authorised key can neither report for the first key's workers nor claim its host.
* **Clean exit** — which peers got a non-error answer and which were told ``done``, so the
  controller can linger until every worker heard ``done``.
* **Rejections are logged rate-limited** — one line per error code per window, so a hostile
  flood cannot flood the log.
* **Bounded** — every per-peer structure has a cap (least recently used out first), so a
  flood of ever new identities cannot grow memory without limit: ``cache_peers`` replies,
  ``MAX_TRACKED_PEERS`` seen/done peers, ``MAX_PARKED`` held requests (the oldest is answered
  ``wait(0)`` early), ``MAX_HOSTS`` hosts and ``MAX_OWNED_WORKERS`` owned worker ids.

Why a class of its own: these rules used to live in the ZeroMQ bridge thread, where only
socket tests could reach them and the simulator, which drives ``ControllerCore`` directly,
never exercised them. Here they are plain data structures and an injected clock (every
method takes ``now``; when omitted, ``clock()`` is read), with no sockets, threads or actors,
so the bridge (``runtime/controller/controller_actor.py``, wall-clock monotonic time), the simulator
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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pbt_actors.model.protocol import (
    Done,
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

log = logging.getLogger(__name__)

PARK_S = 2.0
"""How long a request answered ``wait`` is held (long poll) before the worker is told
``wait(0)`` and asks again: well inside a worker's request timeout, so it never resends."""
REPLY_CACHE_PEERS = 4096
"""Peers whose last reply is cached (least recently answered first out): bounded, so that a
flood from ever new identities cannot grow the controller's memory without limit."""

MAX_TRACKED_PEERS = 16_384
"""Peers remembered as seen / told ``done`` (for the clean exit), least recently seen out first."""
MAX_PARKED = 16_384
"""Requests held at once; past it the oldest is answered ``wait(0)`` at once (it asks again)."""
MAX_HOSTS = 4096
"""Host supervisors whose host id is bound to their connection."""
MAX_OWNED_WORKERS = 65_536
"""Worker ids bound to the supervisor that owns them."""
HOST_LEASE_S = 15.0
"""A supervisor's claim on its host id lasts this long after its last ``hello`` (they repeat it
every ``HOST_HELLO_S`` = 3 s), so a supervisor that died frees its host id for a restart."""

PeerRequest = tuple[bytes, int, Message]
"""``(peer, request_id, message)``: a decoded request. ``peer`` is the routing identity."""


class Outgoing(NamedTuple):
    """A reply to send: ``endpoint.send(*outgoing)`` takes it as is."""

    peer: bytes
    request_id: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class Parked:
    """A held request for work: answered when the core's answer is not ``wait``, or at
    ``since + park_s`` with ``wait(0)``. ``since`` survives re-asking, so the limit counts
    from when the worker asked, however often the request went back to the core."""

    request_id: int
    worker: str
    since: float


class Round:
    """One exchange with the core, from ``receive`` or ``tick`` to ``answer``.

    ``send``: answers to send at once (cached replies, rejections, overdue ``wait(0)``).
    ``messages``: the batch to hand to ``ControllerCore.handle_batch`` (possibly empty); its
    replies go back through ``ProtocolSession.answer`` in the same order.
    """

    __slots__ = ("_requests", "_requeued", "messages", "send")

    def __init__(self, send: list[Outgoing], requests: list[PeerRequest], requeued: dict[bytes, Parked]) -> None:
        self.send = send
        self._requests = requests
        self.messages: list[Message] = [m for _, _, m in requests]
        self._requeued = requeued

    def __repr__(self) -> str:
        return f"Round(send={self.send!r}, messages={self.messages!r})"


class LruSet:
    """A set of at most ``cap`` strings; adding past the cap drops the least recently added."""

    __slots__ = ("_items", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._items: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> None:
        items = self._items
        items[item] = None
        items.move_to_end(item)
        if len(items) > self.cap:
            items.popitem(last=False)

    def discard(self, item: str) -> None:
        self._items.pop(item, None)

    def copy(self) -> set[str]:
        return set(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._items))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LruSet):
            return set(self._items) == set(other._items)
        if isinstance(other, set | frozenset):
            return set(self._items) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LruSet({set(self._items)!r}, cap={self.cap})"


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
    """

    def __init__(self, *, park_s: float | None = None, cache_peers: int = REPLY_CACHE_PEERS,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = log,
                 run_id: str | None = None, host_lease_s: float = HOST_LEASE_S,
                 max_peers: int = MAX_TRACKED_PEERS, max_hosts: int = MAX_HOSTS,
                 max_owned: int = MAX_OWNED_WORKERS) -> None:
        if cache_peers < 1:
            raise ValueError("cache_peers must be >= 1")
        if park_s is not None and park_s < 0:
            raise ValueError("park_s must be >= 0")
        self._park_s = park_s
        self.cache_peers = cache_peers
        self.clock = clock
        self.rejections = RateLimitedLog(logger, clock=clock) if logger is not None else None
        """One log line per kind of rejected input (the error code) per window, however many."""
        self._last_reply: OrderedDict[bytes, tuple[int, Reply]] = OrderedDict()
        self._parked: dict[bytes, Parked] = {}
        self.max_parked = max_peers
        self.peers_seen = LruSet(max_peers)
        """Peers that got a non-error answer: the workers to tell ``done`` before exiting (a
        peer that only ever sent rejected input is nobody's worker and is not waited for)."""
        self.peers_done = LruSet(max_peers)
        """Peers that were answered ``done``."""
        self.run_id = run_id
        self.host_lease_s = host_lease_s
        self.max_hosts = max_hosts
        self.max_owned = max_owned
        self._hosts: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        """host id -> (the supervisor peer that said hello as it, when it last did)."""
        self._owners: OrderedDict[str, bytes] = OrderedDict()
        """worker id -> the supervisor peer of its host (who alone may say it is lost)."""
        self._keys: OrderedDict[str, str] = OrderedDict()
        """worker, supervisor or ``host:<host id>`` -> the CURVE key (ZAP User-Id) bound to it."""
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
        return dict(self._parked)

    def sizes(self) -> dict[str, int]:
        """How many entries each per-peer structure holds (all bounded; for tests and stats)."""
        return {"reply_cache": len(self._last_reply), "parked": len(self._parked),
                "peers_seen": len(self.peers_seen), "peers_done": len(self.peers_done),
                "hosts": len(self._hosts), "owners": len(self._owners), "keys": len(self._keys)}

    def host_owner(self, host: str) -> bytes | None:
        """The supervisor peer bound to ``host`` (None: none, or its claim lapsed)."""
        entry = self._hosts.get(host)
        if entry is None or self.clock() - entry[1] > self.host_lease_s:
            return None
        return entry[0]

    def cached(self, peer: bytes) -> tuple[int, Reply] | None:
        """The peer's last request id and our reply to it, if still cached."""
        return self._last_reply.get(peer)

    def next_deadline(self) -> float | None:
        """When the oldest held request falls due for ``wait(0)`` (None: nothing held)."""
        if not self._parked:
            return None
        return min(p.since for p in self._parked.values()) + self.park_s

    def peers_not_done(self) -> set[str]:
        """Workers that talked to us but have not been told ``done`` yet (for a clean exit)."""
        return self.peers_seen.copy() - self.peers_done.copy()

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
        parked = self._parked
        last_reply = self._last_reply
        wakes = False
        for peer, request_id, message in requests:
            held = parked.get(peer)
            if held is not None:
                if held.request_id == request_id:
                    continue  # a resend of a request we are holding: its answer is coming
                del parked[peer]  # the peer moved on (restarted): drop the old one
            if in_batch.get(peer) == request_id:
                continue  # a resend that arrived with the original: answered once, below
            cached = last_reply.get(peer)
            if cached is not None and cached[0] == request_id:
                send.append(Outgoing(peer, request_id, cached[1]))
                continue
            if self.run_id is not None:
                refusal = self._identity_check(peer, message, self.clock() if now is None else now,
                                               keys.get(peer, "") if keys else "")
                if refusal is not None:
                    self._refuse(send, peer, request_id, message, refusal)
                    continue
            claimed = getattr(message, "worker", None)
            if claimed is not None and not isinstance(message, WorkerLost):
                sender = peer.decode("utf-8", "replace")
                if claimed != sender:
                    if self.rejections is not None:
                        self.rejections.warning(
                            "not_leaseholder", "rejected %s from %r: not_leaseholder: it claims to be worker %r",
                            getattr(message, "TYPE", "?"), sender[:64], claimed[:64])
                    send.append(Outgoing(peer, request_id,
                                         Error("not_leaseholder", f"body worker {claimed!r} is not the sender")))
                    continue
            if isinstance(message, Report | Fail | WorkerLost):
                wakes = True
                if isinstance(message, WorkerLost):
                    self.peers_seen.discard(message.worker)
                    parked.pop(message.worker.encode("utf-8"), None)
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
                    self._parked[peer] = Parked(request_id, message.worker, now)
                    self.held_total += 1
                    out.extend(self._shed_parked())
                    continue
                if now < previous.since + park_s:  # the form next_deadline() uses: exact at the deadline
                    self._parked[peer] = previous
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
        if released and self._parked:
            return self._round([], [], requeue=True)  # overdue ones still waiting: answer() says wait(0)
        return Round(self.release_overdue(now), [], {})

    def release_overdue(self, now: float | None = None) -> list[Outgoing]:
        """Answer requests held for ``park_s`` with ``wait(0)``: the worker asks again at once."""
        if not self._parked:
            return []
        now = self.clock() if now is None else now
        park_s = self.park_s
        overdue = [(peer, p) for peer, p in self._parked.items() if now >= p.since + park_s]
        out = []
        for peer, parked in overdue:
            del self._parked[peer]
            out.append(self._record(peer, parked.request_id, RequestTrial(parked.worker), Wait(0.0)))
        return out

    # --- identity rules (run_id set) -------------------------------------------------------------
    def _identity_check(self, peer: bytes, message: Message, now: float, key: str = "") -> Error | None:
        """The run-identity, key-binding and host-ownership rules (module docstring); None:
        accepted. An accepted supervisor ``hello`` (re)binds its host id and worker ids to
        ``peer`` (and, with ``key``, to that key)."""
        run = getattr(message, "run", "")
        if run and run != self.run_id:
            return Error("wrong_run", f"this controller serves run {self.run_id}, not run {run} "
                                      "(the worker belongs to another run or store: it must exit)")
        claims: list[str] = []
        if key:
            claims.append(peer.decode("utf-8", "replace"))
            if isinstance(message, Hello) and message.workers:
                claims.append(f"host:{message.host or message.worker}")
                claims.extend(message.workers)
            for claim in claims:
                bound = self._keys.get(claim)
                if bound is not None and bound != key:
                    what = f"host id {claim[5:]!r}" if claim.startswith("host:") else f"worker id {claim!r}"
                    return Error("not_owner", f"{what} is bound to another CURVE key (the one that said hello "
                                              "with it first); this key may not speak for it")
            if not (isinstance(message, Hello) and message.workers):
                self._bind_keys(claims, key)  # a supervisor's claims are bound once accepted, below
        if isinstance(message, WorkerLost):
            owner = self._owners.get(message.worker)
            if owner != peer:
                return Error("not_owner", f"worker {message.worker!r} is not a worker of the sender's host "
                                          "(only its host supervisor, after its hello, may say it is lost)")
            return None
        if isinstance(message, Hello) and message.workers:
            refusal = self._claim_host(peer, message, now)
            if refusal is None and key:
                self._bind_keys(claims, key)
            return refusal
        return None

    def _bind_keys(self, claims: list[str], key: str) -> None:
        bound = self._keys
        for claim in claims:
            bound[claim] = key
            bound.move_to_end(claim)
        while len(bound) > self.max_owned:
            bound.popitem(last=False)

    def _claim_host(self, peer: bytes, hello: Hello, now: float) -> Error | None:
        host = hello.host or hello.worker
        entry = self._hosts.get(host)
        if entry is not None and entry[0] != peer and now - entry[1] <= self.host_lease_s:
            return Error("host_taken", f"host id {host!r} is in use by another host supervisor "
                                       f"(it said hello {now - entry[1]:.0f}s ago); give each host a distinct "
                                       "--host-id")
        for worker in hello.workers:
            owner = self._owners.get(worker)
            if owner is not None and owner != peer:
                claim = next((h for h, (p, t) in self._hosts.items() if p == owner and now - t <= self.host_lease_s),
                             None)
                if claim is not None:
                    return Error("host_taken", f"worker id {worker!r} belongs to the live supervisor of host "
                                               f"{claim!r}; give each host a distinct --host-id")
        hosts = self._hosts
        hosts[host] = (peer, now)
        hosts.move_to_end(host)
        while len(hosts) > self.max_hosts:
            hosts.popitem(last=False)
        owners = self._owners
        for worker in hello.workers:
            owners[worker] = peer
            owners.move_to_end(worker)
        while len(owners) > self.max_owned:
            owners.popitem(last=False)
        return None

    def _refuse(self, send: list[Outgoing], peer: bytes, request_id: int, message: Message, error: Error) -> None:
        """Answer ``error`` now, without caching it (a resend is checked afresh) or the core."""
        if self.rejections is not None:
            self.rejections.warning(error.code, "rejected %s from %r: %s: %s", getattr(message, "TYPE", "?"),
                                    peer.decode("utf-8", "replace")[:64], error.code, error.message[:200])
        send.append(Outgoing(peer, request_id, error))

    # --- internals ------------------------------------------------------------------------------------
    def _round(self, send: list[Outgoing], batch: list[PeerRequest], *, requeue: bool) -> Round:
        if requeue and self._parked:
            requeued = self._parked
            self._parked = {}
            batch.extend((peer, p.request_id, RequestTrial(p.worker)) for peer, p in requeued.items())
            return Round(send, batch, requeued)
        return Round(send, batch, {})

    def _shed_parked(self) -> list[Outgoing]:
        """Past ``max_parked`` held requests, answer the oldest ``wait(0)`` now (dicts keep
        insertion order: the first is the one held longest)."""
        out = []
        while len(self._parked) > self.max_parked:
            peer = next(iter(self._parked))
            parked = self._parked.pop(peer)
            out.append(self._record(peer, parked.request_id, RequestTrial(parked.worker), Wait(0.0)))
        return out

    def _record(self, peer: bytes, request_id: int, message: Message, reply: Reply) -> Outgoing:
        """Cache the reply we are about to send and account for it."""
        last_reply = self._last_reply
        last_reply[peer] = (request_id, reply)
        last_reply.move_to_end(peer)
        if len(last_reply) > self.cache_peers:
            last_reply.popitem(last=False)
        if isinstance(reply, Error):
            if self.rejections is not None:
                sender = peer.decode("utf-8", "replace")
                self.rejections.warning(reply.code, "rejected %s from %r: %s: %s", getattr(message, "TYPE", "?"),
                                        sender[:64], reply.code, reply.message[:200])
        elif not isinstance(message, WorkerLost):
            sender = peer.decode("utf-8", "replace")
            self.peers_seen.add(sender)
            if isinstance(reply, Done):
                self.peers_done.add(sender)
        return Outgoing(peer, request_id, reply)
