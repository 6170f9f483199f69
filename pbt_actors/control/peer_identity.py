"""Who may speak for whom: the identity rules a controller applies to each peer's request.

* **Sender check** — a body ``worker`` that is not the sending peer is refused
  ``not_leaseholder`` (``worker_lost`` is exempt: a supervisor speaks about another worker by
  design). Always on.
* **Run identity** (the networked controller, docs/design.md §10) — a request that names another run
  than ours is refused ``wrong_run`` (the worker then exits: it belongs to an older or another
  store's run); ``""`` means "not known yet" (a first ``hello``).
* **Host ownership** — a host supervisor says ``hello`` with its host id and its worker ids and
  repeats it every few seconds; while it does (within ``host_lease_s``), another peer's
  ``hello`` for that host id, or for one of those worker ids as a supervisor, is refused
  ``host_taken``, and ``worker_lost`` is accepted only from the supervisor that owns that
  worker (else ``not_owner``).
* **Key binding** (CURVE: the bridge passes each sender's key, the ZAP ``User-Id``) — the first
  key heard for a worker id (the sender's routing id, and for a supervisor's ``hello`` also its
  host id and its ``workers``) is bound to it; anything from that id, or a ``hello`` claiming
  it, with another key is refused ``not_owner``. So a second authorised key can neither report
  for the first key's workers nor claim its host.

Every table is a ``BoundedLru``, but a live claim is never evicted from one (a flood of made-up
worker ids once evicted the real owners and took their ids over): each supervisor ``hello`` lists
at most ``MAX_WORKERS_PER_HOST`` ids, one connection speaks for one host, one CURVE key for at
most ``MAX_HOSTS_PER_KEY`` live hosts, and the ids a re-``hello`` no longer lists stay its own
(a late ``worker_lost``) only up to as many again as a hello may list.
When a table is full, only claims whose connection is gone are dropped (a host that has not
repeated its ``hello`` within ``host_lease_s``, a key binding silent for ``KEY_IDLE_S`` and not
held by a live host); if that frees too little, the new claim is refused, never an old one.
"""

from __future__ import annotations

from typing import NamedTuple

from pbt_actors.common.bounded_lru import BoundedLru
from pbt_actors.model.protocol import Error, Hello, Message, WorkerLost

MAX_HOSTS = 4096
"""Host supervisors whose host id is bound to their connection."""
MAX_OWNED_WORKERS = 65_536
"""Worker ids bound to the supervisor that owns them (and ids bound to a CURVE key)."""
MAX_WORKERS_PER_HOST = 1024
"""Worker ids one supervisor ``hello`` may claim (a host runs one worker per slot)."""
MAX_HOSTS_PER_KEY = 256
"""Live hosts one CURVE key may speak for (a key shared by a whole cluster's hosts fits)."""
HOST_LEASE_S = 15.0
"""A supervisor's claim on its host id lasts this long after its last ``hello`` (they repeat it
every ``HOST_HELLO_S`` = 3 s), so a supervisor that died frees its host id for a restart."""
KEY_IDLE_S = 600.0
"""A key binding not used for this long, and not held by a live host, may go when its table is
full (a live worker speaks at least every heartbeat or park interval, far more often)."""


class HostClaim(NamedTuple):
    """A supervisor's live claim on a host id: its connection, last ``hello``, ids and key."""

    peer: bytes
    seen: float
    workers: tuple[str, ...]
    key: str


def sender_mismatch(peer: bytes, message: Message) -> Error | None:
    """``not_leaseholder`` if the body names another worker than the sending peer."""
    claimed = getattr(message, "worker", None)
    if claimed is None or isinstance(message, WorkerLost):
        return None
    if claimed == peer.decode("utf-8", "replace"):
        return None
    return Error("not_leaseholder", f"body worker {claimed!r} is not the sender")


def _refused(text: str) -> Error:
    return Error("host_taken", text)


class PeerIdentityRules:
    """The run-identity, key-binding and host-ownership rules of one run (module docstring)."""

    __slots__ = ("_hosts", "_keys", "_owners", "_peer_host", "experiment_file", "host_lease_s",
                 "max_hosts_per_key", "max_workers_per_host", "run_id")

    def __init__(self, run_id: str, *, host_lease_s: float = HOST_LEASE_S, max_hosts: int = MAX_HOSTS,
                 max_owned: int = MAX_OWNED_WORKERS, max_workers_per_host: int = MAX_WORKERS_PER_HOST,
                 max_hosts_per_key: int = MAX_HOSTS_PER_KEY, experiment_file: tuple[str, str] = ("", "")) -> None:
        self.run_id = run_id
        self.experiment_file = experiment_file
        """(path, sha256) of the experiment file this controller was started from (("", ""): unknown)."""
        self.host_lease_s = host_lease_s
        self.max_workers_per_host = max_workers_per_host
        self.max_hosts_per_key = max_hosts_per_key
        self._hosts: BoundedLru[str, HostClaim] = BoundedLru(max_hosts)
        """host id -> the claim of the supervisor that said hello as it."""
        self._peer_host: BoundedLru[bytes, str] = BoundedLru(max_hosts)
        """supervisor peer -> the host id it claimed (live while that host's claim is its own)."""
        self._owners: BoundedLru[str, bytes] = BoundedLru(max_owned)
        """worker id -> the supervisor peer of its host (who alone may say it is lost)."""
        self._keys: BoundedLru[str, tuple[str, float]] = BoundedLru(max_owned)
        """worker, supervisor or ``host:<host id>`` -> (the CURVE key bound to it, when last used)."""

    def sizes(self) -> dict[str, int]:
        return {"hosts": len(self._hosts), "owners": len(self._owners), "keys": len(self._keys)}

    def host_owner(self, host: str, now: float) -> bytes | None:
        """The supervisor peer bound to ``host`` (None: none, or its claim lapsed)."""
        claim = self._hosts.get(host)
        if claim is None or now - claim.seen > self.host_lease_s:
            return None
        return claim.peer

    def _live_host_of(self, peer: bytes, now: float) -> str | None:
        host = self._peer_host.get(peer)
        return host if host is not None and self.host_owner(host, now) == peer else None

    def _key_binding_dead(self, claim: str, entry: tuple[str, float], now: float) -> bool:
        if now - entry[1] <= KEY_IDLE_S:
            return False
        if claim.startswith("host:"):
            return self.host_owner(claim[5:], now) is None
        owner = self._owners.get(claim)
        return owner is None or self._live_host_of(owner, now) is None

    def check(self, peer: bytes, message: Message, now: float, key: str = "") -> Error | None:
        """None: accepted. An accepted supervisor ``hello`` (re)binds its host id and worker ids
        to ``peer`` (and, with ``key``, to that key)."""
        run = getattr(message, "run", "")
        if run and run != self.run_id:
            return Error("wrong_run", f"this controller serves run {self.run_id}, not run {run} "
                                      "(the worker belongs to another run or store: it must exit)")
        if isinstance(message, Hello):
            refusal = self._other_experiment(message)
            if refusal is not None:
                return refusal
        supervisor_hello = message if isinstance(message, Hello) and message.workers else None
        claims: list[str] = []
        if key:
            claims.append(peer.decode("utf-8", "replace"))
            if supervisor_hello is not None:
                claims.append(f"host:{supervisor_hello.host or supervisor_hello.worker}")
                claims.extend(supervisor_hello.workers)
            for claim in claims:
                bound = self._keys.get(claim)
                if bound is not None and bound[0] != key:
                    what = f"host id {claim[5:]!r}" if claim.startswith("host:") else f"worker id {claim!r}"
                    return Error("not_owner", f"{what} is bound to another CURVE key (the one that said hello "
                                              "with it first); this key may not speak for it")
            if supervisor_hello is None:  # a supervisor's claims are bound once accepted, below
                if not self._keys.make_room(claims, lambda c, e: self._key_binding_dead(c, e, now)):
                    return _refused("the controller's table of CURVE key bindings is full of live ones; "
                                    "try again later")
                self._keys.put_all(claims, (key, now))
        if isinstance(message, WorkerLost):
            if self._owners.get(message.worker) != peer:
                return Error("not_owner", f"worker {message.worker!r} is not a worker of the sender's host "
                                          "(only its host supervisor, after its hello, may say it is lost)")
            return None
        if supervisor_hello is not None:
            return self._claim_host(peer, supervisor_hello, now, key, claims)
        return None

    def _other_experiment(self, hello: Hello) -> Error | None:
        """``wrong_run`` for a host started from another experiment file than ours (by sha256):
        its workers would fail every trial. A hello that does not say (an older peer) passes."""
        ours_path, ours = self.experiment_file
        if not hello.experiment_sha256 or not ours or hello.experiment_sha256 == ours:
            return None
        return Error("wrong_run", f"the host's experiment file {hello.experiment_file or '(unnamed)'} (sha256 "
                                  f"{hello.experiment_sha256[:12]}) is not the controller's {ours_path or '(unnamed)'} "
                                  f"(sha256 {ours[:12]}): start the host with the controller's experiment file")

    def _refusal(self, peer: bytes, hello: Hello, now: float, key: str) -> Error | None:
        """Why ``peer`` may not claim the host and workers of ``hello`` (None: it may)."""
        host = hello.host or hello.worker
        if len(set(hello.workers)) > self.max_workers_per_host:
            return _refused(f"a host may list at most {self.max_workers_per_host} worker ids, "
                            f"this hello lists {len(set(hello.workers))}")
        claim = self._hosts.get(host)
        if claim is not None and claim.peer != peer and now - claim.seen <= self.host_lease_s:
            return _refused(f"host id {host!r} is in use by another host supervisor (it said hello "
                            f"{now - claim.seen:.0f}s ago); give each host a distinct --host-id")
        own = self._live_host_of(peer, now)
        if own is not None and own != host:
            return _refused(f"this connection already speaks for host {own!r}; one connection, one host")
        if key and sum(1 for h, c in self._hosts.items() if c.key == key and h != host
                       and now - c.seen <= self.host_lease_s) >= self.max_hosts_per_key:
            return _refused(f"this CURVE key already speaks for {self.max_hosts_per_key} live hosts")
        for worker in hello.workers:
            owner = self._owners.get(worker)
            if owner is not None and owner != peer:
                live = self._live_host_of(owner, now)
                if live is not None:
                    return _refused(f"worker id {worker!r} belongs to the live supervisor of host {live!r}; "
                                    "give each host a distinct --host-id")
        return None

    def _claim_host(self, peer: bytes, hello: Hello, now: float, key: str, claims: list[str]) -> Error | None:
        refusal = self._refusal(peer, hello, now, key)
        if refusal is not None:
            return refusal
        host = hello.host or hello.worker
        previous = self._hosts.get(host)
        listed = list(dict.fromkeys(hello.workers))
        owned = listed
        if previous is not None and previous.peer == peer:
            # ids it no longer lists (a restarted slot's dead process) stay its own, so that a late
            # worker_lost for them is accepted, but at most as many as it lists: the oldest go first
            retired = [w for w in previous.workers if w not in set(listed)]
            keep = max(0, self.max_workers_per_host * 2 - len(listed))
            for gone in retired[:len(retired) - keep] if len(retired) > keep else ():
                if self._owners.get(gone) == peer:
                    self._owners.pop(gone)
            owned = retired[-keep:] + listed if keep and retired else listed
        lapsed = lambda _k, c: now - c.seen > self.host_lease_s  # noqa: E731
        if not (self._hosts.make_room([host], lapsed)
                and self._peer_host.make_room([peer], lambda p, _h: self._live_host_of(p, now) is None)
                and self._owners.make_room(hello.workers, lambda _w, p: self._live_host_of(p, now) is None)
                and self._keys.make_room(claims, lambda c, e: self._key_binding_dead(c, e, now))):
            return _refused("the controller's tables of hosts and worker ids are full of live claims "
                            f"(at most {self._hosts.cap} hosts, {self._owners.cap} worker ids); try again later")
        self._hosts.put(host, HostClaim(peer, now, tuple(owned), key))
        self._peer_host.put(peer, host)
        self._owners.put_all(hello.workers, peer)
        if key:
            self._keys.put_all(claims, (key, now))
        return None
