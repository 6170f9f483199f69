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

Every table is a ``BoundedLru``: a flood of fresh identities cannot grow memory without limit.
"""

from __future__ import annotations

from pbt_actors.common.bounded_lru import BoundedLru
from pbt_actors.model.protocol import Error, Hello, Message, WorkerLost

MAX_HOSTS = 4096
"""Host supervisors whose host id is bound to their connection."""
MAX_OWNED_WORKERS = 65_536
"""Worker ids bound to the supervisor that owns them (and ids bound to a CURVE key)."""
HOST_LEASE_S = 15.0
"""A supervisor's claim on its host id lasts this long after its last ``hello`` (they repeat it
every ``HOST_HELLO_S`` = 3 s), so a supervisor that died frees its host id for a restart."""


def sender_mismatch(peer: bytes, message: Message) -> Error | None:
    """``not_leaseholder`` if the body names another worker than the sending peer."""
    claimed = getattr(message, "worker", None)
    if claimed is None or isinstance(message, WorkerLost):
        return None
    if claimed == peer.decode("utf-8", "replace"):
        return None
    return Error("not_leaseholder", f"body worker {claimed!r} is not the sender")


class PeerIdentityRules:
    """The run-identity, key-binding and host-ownership rules of one run (module docstring)."""

    __slots__ = ("_hosts", "_keys", "_owners", "host_lease_s", "run_id")

    def __init__(self, run_id: str, *, host_lease_s: float = HOST_LEASE_S, max_hosts: int = MAX_HOSTS,
                 max_owned: int = MAX_OWNED_WORKERS) -> None:
        self.run_id = run_id
        self.host_lease_s = host_lease_s
        self._hosts: BoundedLru[str, tuple[bytes, float]] = BoundedLru(max_hosts)
        """host id -> (the supervisor peer that said hello as it, when it last did)."""
        self._owners: BoundedLru[str, bytes] = BoundedLru(max_owned)
        """worker id -> the supervisor peer of its host (who alone may say it is lost)."""
        self._keys: BoundedLru[str, str] = BoundedLru(max_owned)
        """worker, supervisor or ``host:<host id>`` -> the CURVE key (ZAP User-Id) bound to it."""

    def sizes(self) -> dict[str, int]:
        return {"hosts": len(self._hosts), "owners": len(self._owners), "keys": len(self._keys)}

    def host_owner(self, host: str, now: float) -> bytes | None:
        """The supervisor peer bound to ``host`` (None: none, or its claim lapsed)."""
        entry = self._hosts.get(host)
        if entry is None or now - entry[1] > self.host_lease_s:
            return None
        return entry[0]

    def check(self, peer: bytes, message: Message, now: float, key: str = "") -> Error | None:
        """None: accepted. An accepted supervisor ``hello`` (re)binds its host id and worker ids
        to ``peer`` (and, with ``key``, to that key)."""
        run = getattr(message, "run", "")
        if run and run != self.run_id:
            return Error("wrong_run", f"this controller serves run {self.run_id}, not run {run} "
                                      "(the worker belongs to another run or store: it must exit)")
        supervisor_hello = message if isinstance(message, Hello) and message.workers else None
        claims: list[str] = []
        if key:
            claims.append(peer.decode("utf-8", "replace"))
            if supervisor_hello is not None:
                claims.append(f"host:{supervisor_hello.host or supervisor_hello.worker}")
                claims.extend(supervisor_hello.workers)
            for claim in claims:
                bound = self._keys.get(claim)
                if bound is not None and bound != key:
                    what = f"host id {claim[5:]!r}" if claim.startswith("host:") else f"worker id {claim!r}"
                    return Error("not_owner", f"{what} is bound to another CURVE key (the one that said hello "
                                              "with it first); this key may not speak for it")
            if supervisor_hello is None:
                self._keys.put_all(claims, key)  # a supervisor's claims are bound once accepted, below
        if isinstance(message, WorkerLost):
            if self._owners.get(message.worker) != peer:
                return Error("not_owner", f"worker {message.worker!r} is not a worker of the sender's host "
                                          "(only its host supervisor, after its hello, may say it is lost)")
            return None
        if supervisor_hello is not None:
            refusal = self._claim_host(peer, supervisor_hello, now)
            if refusal is None and key:
                self._keys.put_all(claims, key)
            return refusal
        return None

    def _live_host_of(self, peer: bytes, now: float) -> str | None:
        return next((h for h, (p, t) in self._hosts.items() if p == peer and now - t <= self.host_lease_s), None)

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
                claim = self._live_host_of(owner, now)
                if claim is not None:
                    return Error("host_taken", f"worker id {worker!r} belongs to the live supervisor of host "
                                               f"{claim!r}; give each host a distinct --host-id")
        self._hosts.put(host, (peer, now))
        self._owners.put_all(hello.workers, peer)
        return None
