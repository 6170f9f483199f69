"""The identity rules of ``ProtocolSession`` (run id, host ownership) and its memory bounds,
pure: a session in front of a real in-memory core, on a clock the test sets."""

from __future__ import annotations

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.session import ProtocolSession
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import (
    Ack,
    Error,
    Heartbeat,
    Hello,
    Message,
    Reply,
    Report,
    RequestTrial,
    TrialAssignment,
    Wait,
    WorkerLost,
)
from pbt_actors.model.space import Float
from pbt_actors.storage.memory import InMemoryTrialStore

pytestmark = pytest.mark.timeout(60)


class Harness:
    def __init__(self, **session: object) -> None:
        self.now = 0.0
        experiment = Experiment(name="ident", space={"x": Float(0.0, 1.0)}, objective="score", population=2,
                                steps_per_trial=1, max_steps=2, lease_s=600, seed=1)
        self.core = ControllerCore(InMemoryTrialStore(), experiment, now=0.0, wait_s=5.0)
        self.session = ProtocolSession(park_s=0, clock=lambda: self.now, logger=None, run_id=self.core.run_id,
                                       **session)  # type: ignore[arg-type]

    def handle(self, messages: list[Message]) -> list[Reply]:
        return self.core.handle_batch(messages, self.now)

    def one(self, peer: bytes, request_id: int, message: Message, key: str = "") -> Reply:
        step = self.session.receive([(peer, request_id, message)], keys={peer: key} if key else None)
        out = self.session.serve(step, self.handle, self.now)
        assert len(out) == 1
        return out[0].reply


# --- run identity (item 2) -------------------------------------------------------------------------
def test_hello_learns_the_run_id_and_later_requests_carry_it() -> None:
    h = Harness()
    reply = h.one(b"w0", 1, Hello("w0"))
    assert isinstance(reply, Ack) and reply.run == h.core.run_id and len(reply.run) == 32
    assert isinstance(h.one(b"w0", 2, RequestTrial("w0", h.core.run_id)), TrialAssignment)


def test_a_worker_of_another_run_is_refused_wrong_run_and_the_core_never_sees_it() -> None:
    h = Harness()
    for request_id, message in enumerate([Hello("w0", run="0" * 32), RequestTrial("w0", "0" * 32),
                                          Heartbeat("w0", 1, 1, 0, None, "0" * 32),
                                          Report("w0", 1, 1, {"score": 1.0}, run="0" * 32)], start=1):
        reply = h.one(b"w0", request_id, message)
        assert isinstance(reply, Error) and reply.code == "wrong_run", reply
        assert h.core.run_id in reply.message
    assert h.core.store.count() == 2 and not h.core.store.running_leased_to("w0")


def test_the_run_id_is_fixed_at_store_creation() -> None:
    store = InMemoryTrialStore()
    experiment = Experiment(name="ident", space={"x": Float(0.0, 1.0)}, objective="score", population=1,
                            steps_per_trial=1, max_steps=1, seed=1)
    first = ControllerCore(store, experiment).run_id
    assert ControllerCore(store, experiment).run_id == first  # a restarted controller: the same run
    assert ControllerCore(InMemoryTrialStore(), experiment).run_id != first  # another store: another run


# --- hosts (items 3 and 6) -------------------------------------------------------------------------
def test_a_second_supervisor_with_a_live_host_id_is_refused_host_taken() -> None:
    h = Harness(host_lease_s=15.0)
    assert isinstance(h.one(b"sup-1", 1, Hello("sup-1", host="h1", workers=("h1-w0",))), Ack)
    reply = h.one(b"sup-2", 1, Hello("sup-2", host="h1", workers=("h1-w0",)))
    assert isinstance(reply, Error) and reply.code == "host_taken" and "h1" in reply.message
    # another host id, but claiming a live host's worker id: refused too
    reply = h.one(b"sup-3", 1, Hello("sup-3", host="h2", workers=("h1-w0",)))
    assert isinstance(reply, Error) and reply.code == "host_taken"
    # the owner keeps its claim by saying hello again; after it lapses, a restarted host gets it
    h.now = 10.0
    assert isinstance(h.one(b"sup-1", 2, Hello("sup-1", host="h1", workers=("h1-w0",))), Ack)
    h.now = 20.0
    assert isinstance(h.one(b"sup-2", 2, Hello("sup-2", host="h1", workers=("h1-w0",))), Error)
    h.now = 26.0  # 16 s after sup-1's last hello
    assert isinstance(h.one(b"sup-2", 3, Hello("sup-2", host="h1", workers=("h1-w0",))), Ack)
    assert h.session.host_owner("h1") == b"sup-2"


def test_worker_lost_only_from_the_supervisor_that_owns_the_worker() -> None:
    h = Harness()
    assert isinstance(h.one(b"h1-w0", 1, Hello("h1-w0")), Ack)
    assert isinstance(h.one(b"h1-w0", 2, RequestTrial("h1-w0")), TrialAssignment)
    assert isinstance(h.one(b"sup-1", 1, Hello("sup-1", host="h1", workers=("h1-w0",))), Ack)
    for peer in (b"sup-2", b"h2-w0", b"h1-w0"):  # another host, another worker, the worker itself
        reply = h.one(peer, 7, WorkerLost("h1-w0", "forged"))
        assert isinstance(reply, Error) and reply.code == "not_owner", (peer, reply)
    assert h.core.store.running_leased_to("h1-w0")  # nothing was released
    assert isinstance(h.one(b"sup-1", 2, WorkerLost("h1-w0", "SIGKILL")), Ack)
    assert not h.core.store.running_leased_to("h1-w0")


# --- memory (item 9) -------------------------------------------------------------------------------
def test_a_flood_of_fresh_identities_keeps_every_per_peer_structure_under_its_cap() -> None:
    caps = dict(cache_peers=512, max_peers=512, max_hosts=64, max_owned=256)
    now = [0.0]  # one second per round: claims lapse (a live one is never evicted: refused instead)
    session = ProtocolSession(park_s=2.0, clock=lambda: now[0], logger=None, run_id="r" * 32,
                              **caps)  # type: ignore[arg-type]
    requests = 0

    def handle(messages: list[Message]) -> list[Reply]:
        return [Ack(session.run_id or "") if isinstance(m, Hello) else Wait(1.0) if isinstance(m, RequestTrial)
                else Ack() for m in messages]

    for i in range(100_000):
        now[0] = float(i)
        peer = f"p{i}".encode()
        batch: list[tuple[bytes, int, Message]] = [(peer, 1, Hello(peer.decode())),
                                                   (f"q{i}".encode(), 1, RequestTrial(f"q{i}"))]
        if i % 10 == 0:
            batch.append((f"s{i}".encode(), 1, Hello(f"s{i}", host=f"host{i}", workers=(f"host{i}-w0",
                                                                                       f"host{i}-w1"))))
        keys = {p: f"key{i}" for p, _, _ in batch}  # CURVE: every peer its own key, all bound
        session.serve(session.receive(batch, now[0], keys=keys), handle, now[0])
        requests += len(batch)
        if i % 10_000 == 0:
            sizes = session.sizes()
            assert sizes["reply_cache"] <= 512 and sizes["peers_seen"] <= 512 and sizes["peers_done"] <= 512
            assert sizes["parked"] <= 512 and sizes["hosts"] <= 64 and sizes["owners"] <= 256
            assert sizes["keys"] <= 256
    sizes = session.sizes()
    assert sizes["reply_cache"] == 512 and sizes["peers_seen"] == 512 and sizes["parked"] <= 512, sizes
    assert sizes["hosts"] <= 64 and sizes["owners"] <= 256 and sizes["keys"] == 256, sizes
    assert requests > 200_000


# --- CURVE: a worker id is bound to the key that said hello with it (issue item 5) ----------------
def test_a_worker_id_is_bound_to_the_key_that_said_hello_and_another_key_cannot_speak_for_it() -> None:
    h = Harness()
    assert isinstance(h.one(b"h1-w0-aaaaaa", 1, Hello("h1-w0-aaaaaa"), key="KEY-A"), Ack)
    trial = h.one(b"h1-w0-aaaaaa", 2, RequestTrial("h1-w0-aaaaaa"), key="KEY-A")
    assert isinstance(trial, TrialAssignment)
    # the same routing id over a connection with another authorised key (the first one closed)
    for request_id, message in enumerate([Hello("h1-w0-aaaaaa"), RequestTrial("h1-w0-aaaaaa"),
                                          Heartbeat("h1-w0-aaaaaa", trial.trial_id, 1, 0, None),
                                          Report("h1-w0-aaaaaa", trial.trial_id, 1, {"score": 9.0})], start=3):
        reply = h.one(b"h1-w0-aaaaaa", request_id, message, key="KEY-B")
        assert isinstance(reply, Error) and reply.code == "not_owner", reply
    assert h.core.store.get_trial(trial.trial_id).final is None  # the forged report never reached the core
    assert h.core.store.running_leased_to("h1-w0-aaaaaa")
    # the key that said hello still may
    assert isinstance(h.one(b"h1-w0-aaaaaa", 9, Report("h1-w0-aaaaaa", trial.trial_id, 1, {"score": 1.0}),
                            key="KEY-A"), Ack)


def test_a_supervisors_host_and_worker_ids_are_bound_to_its_key() -> None:
    h = Harness()
    assert isinstance(h.one(b"sup-1", 1, Hello("sup-1", host="h1", workers=("h1-w0-aaaaaa",)), key="KEY-A"), Ack)
    # a worker of another key cannot say hello as a worker the first host announced...
    reply = h.one(b"h1-w0-aaaaaa", 1, Hello("h1-w0-aaaaaa"), key="KEY-B")
    assert isinstance(reply, Error) and reply.code == "not_owner"
    # ...nor can another key's supervisor claim the host id, even after the first one's claim lapsed
    h.now += 3600
    reply = h.one(b"sup-2", 1, Hello("sup-2", host="h1", workers=("h1-w0-bbbbbb",)), key="KEY-B")
    assert isinstance(reply, Error) and reply.code == "not_owner" and "'h1'" in reply.message
    # the first host's own worker (same key) and a restarted supervisor with the same key may
    assert isinstance(h.one(b"h1-w0-aaaaaa", 2, Hello("h1-w0-aaaaaa"), key="KEY-A"), Ack)
    assert isinstance(h.one(b"sup-3", 1, Hello("sup-3", host="h1", workers=("h1-w0-cccccc",)), key="KEY-A"), Ack)
    # without keys (no CURVE) nothing is bound
    assert h.session.sizes()["keys"] == 5
    assert isinstance(h.one(b"h1-w0-aaaaaa", 3, Hello("h1-w0-aaaaaa")), Ack)
