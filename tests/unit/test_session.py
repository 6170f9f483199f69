"""The protocol session without sockets or threads: reply cache, resends, long-poll parking,
the sender check and the clean-exit bookkeeping, over a real ``ControllerCore`` and the
in-memory store, with an injected clock.

Every test drives the session as the ZeroMQ bridge does (``receive`` → the core's
``handle_batch`` → ``answer``; ``tick`` after the core's lease expiry) and records which
messages reached the core, so a rule that broke shows as a request handled twice, an answer
sent twice or never, or a trial leased that should not have been.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import pytest

from pbt_actors.control.clean_exit import SILENT_S
from pbt_actors.control.core import ControllerCore
from pbt_actors.control.session import Outgoing, Parked, ProtocolSession
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Error,
    Fail,
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
from pbt_actors.model.records import CheckpointRef, TrialStatus, trial_checkpoint_prefix
from pbt_actors.model.space import Float
from pbt_actors.storage.memory import InMemoryTrialStore

pytestmark = pytest.mark.timeout(30)

WA, WB, SUP = b"wa", b"wb", b"supervisor-1"


def chain_experiment(**overrides: object) -> Experiment:
    """One member, two generations: trial 1, then its child 2, then done."""
    settings: dict[str, object] = dict(name="session", space={"x": Float(0.0, 1.0)}, objective="score",
                                       population=1, steps_per_trial=1, max_steps=2, lease_s=600, seed=1)
    settings.update(overrides)
    return Experiment(**settings)  # type: ignore[arg-type]


class Harness:
    """A session in front of a real core, on a clock the test sets (``now``)."""

    def __init__(self, *, park_s: float | None = 2.0, cache_peers: int = 64, **experiment: object) -> None:
        self.now = 0.0
        self.core = ControllerCore(InMemoryTrialStore(), chain_experiment(**experiment), now=0.0, wait_s=5.0)
        self.session = ProtocolSession(park_s=park_s, cache_peers=cache_peers, clock=lambda: self.now, logger=None)
        self.handled: list[Message] = []
        """Every message the core handled, in order."""

    def handle(self, messages: list[Message]) -> list[Reply]:
        self.handled.extend(messages)
        return self.core.handle_batch(messages, self.now)

    def send(self, *requests: tuple[bytes, int, Message]) -> list[Outgoing]:
        """One round; what the session says to send (immediate answers first)."""
        return self.session.serve(self.session.receive(requests), self.handle, self.now)

    def tick(self) -> list[Outgoing]:
        released = self.core.tick(self.now)
        return self.session.serve(self.session.tick(self.now, released=bool(released)), self.handle, self.now)

    def status(self, trial_id: int) -> tuple[TrialStatus, int]:
        trial = self.core.store.get_trial(trial_id)
        return trial.status, trial.attempt


def report(worker: str, spec: TrialAssignment, *, next_trial: bool = False) -> Report:
    ckpt = CheckpointRef(f"{trial_checkpoint_prefix(spec.experiment, spec.trial_id)}a.ckpt", 1, "0" * 64, spec.end_step)
    return Report(worker, spec.trial_id, spec.attempt, {"score": 0.5}, (), ckpt, next=next_trial)


def only(outgoing: Sequence[Outgoing]) -> Outgoing:
    assert len(outgoing) == 1, outgoing
    return outgoing[0]


def lease_first(h: Harness, peer: bytes = WA, request_id: int = 1) -> TrialAssignment:
    out = only(h.send((peer, request_id, RequestTrial(peer.decode()))))
    assert isinstance(out.reply, TrialAssignment) and out.reply.trial_id == 1
    return out.reply


def park(h: Harness, peer: bytes = WB, request_id: int = 7) -> None:
    """The only trial runs elsewhere: ``peer``'s request is held, nothing is sent."""
    assert h.send((peer, request_id, RequestTrial(peer.decode()))) == []
    assert h.session.parked[peer] == Parked(request_id, peer.decode(), h.now)


# --- reply cache ----------------------------------------------------------------------------------------
def test_a_resend_under_the_same_id_gets_the_cached_reply_and_is_not_handled_again() -> None:
    h = Harness()
    spec = lease_first(h)
    handled = len(h.handled)
    step = h.session.receive([(WA, 1, RequestTrial("wa"))])  # the reply was lost: the same request again
    assert step.messages == [] and step.send == [Outgoing(WA, 1, spec)]
    assert len(h.handled) == handled and h.status(1) == (TrialStatus.RUNNING, 1)  # not released, re-leased
    # a report resent likewise: the first answer again, without the core
    assert only(h.send((WA, 2, report("wa", spec)))).reply == Ack()
    handled = len(h.handled)
    assert h.send((WA, 2, report("wa", spec))) == [Outgoing(WA, 2, Ack())]
    assert len(h.handled) == handled
    # a new id is a new request: handled
    assert isinstance(only(h.send((WA, 3, RequestTrial("wa")))).reply, TrialAssignment)
    assert len(h.handled) == handled + 1


def test_a_resend_that_arrives_with_its_original_is_handled_once() -> None:
    h = Harness()
    step = h.session.receive([(WA, 1, RequestTrial("wa")), (WA, 1, RequestTrial("wa"))])
    assert len(step.messages) == 1
    out = h.session.answer(step, h.handle(step.messages))
    assert only(out).request_id == 1 and h.status(1) == (TrialStatus.RUNNING, 1)


def test_the_reply_cache_keeps_the_last_answered_peers_only() -> None:
    h = Harness(cache_peers=2)
    for request_id, peer in enumerate((b"p1", b"p2", b"p3"), start=1):
        assert only(h.send((peer, request_id, Hello(peer.decode())))).reply == Ack(h.core.run_id)
    assert h.session.cached(b"p1") is None  # the least recently answered went out
    assert h.session.cached(b"p2") == (2, Ack(h.core.run_id)) and h.session.cached(b"p3") == (3, Ack(h.core.run_id))
    handled = len(h.handled)
    h.send((b"p1", 1, Hello("p1")))  # no longer cached: handled afresh
    assert len(h.handled) == handled + 1
    assert h.session.cached(b"p2") is None  # p1's new answer pushed p2 out
    h.send((b"p3", 3, Hello("p3")))
    assert len(h.handled) == handled + 1  # p3 still cached
    # answering a cached peer again makes it the most recent: p1 (older) goes, not p3
    h.send((b"p3", 4, Hello("p3")))
    h.send((b"p4", 1, Hello("p4")))
    assert h.session.cached(b"p1") is None and h.session.cached(b"p3") == (4, Ack(h.core.run_id))


# --- long poll ------------------------------------------------------------------------------------------
def test_a_held_request_is_answered_when_a_later_report_creates_work() -> None:
    h = Harness()
    spec = lease_first(h)
    park(h)
    h.now = 1.0
    out = h.send((WA, 2, report("wa", spec)))
    assert out[0] == Outgoing(WA, 2, Ack())
    child = out[1]
    assert (child.peer, child.request_id) == (WB, 7)  # under the held request's id
    assert isinstance(child.reply, TrialAssignment) and child.reply.trial_id == 2 and child.reply.parent_id == 1
    assert h.session.parked == {}
    assert h.session.cached(WB) == (7, child.reply)  # a late resend of it gets the trial too


def test_a_held_report_with_next_is_answered_too_and_both_peers_hear_done() -> None:
    h = Harness()
    spec = lease_first(h)
    park(h)
    child = h.send((WA, 2, report("wa", spec)))[1].reply
    assert isinstance(child, TrialAssignment)
    park(h, WA, 3)  # wa asks again while trial 2 runs
    assert h.session.peers_not_done() == {"wa", "wb"}
    out = h.send((WB, 8, report("wb", child, next_trial=True)))  # the last report: the run ends
    assert out == [Outgoing(WB, 8, Done()), Outgoing(WA, 3, Done())]
    assert h.session.peers_not_done() == set() and h.session.peers_done == {"wa", "wb"}


def test_a_host_supervisor_is_done_once_every_worker_it_listed_heard_done() -> None:
    """Issue 21, 4a: a supervisor only says ``hello``, never asks for work, so it is never
    answered ``done``; the controller must not linger for it once its workers heard ``done``
    (nor for a host whose workers were all reported lost), but does while one still has not."""
    h = Harness()
    assert isinstance(only(h.send((SUP, 1, Hello("supervisor-1", "node1", 1, "", "", ("wa", "wb"))))).reply, Ack)
    spec = lease_first(h)
    park(h)
    assert h.session.peers_not_done() == {"wa", "supervisor-1"}  # wb is held, not answered yet
    child = h.send((WA, 2, report("wa", spec)))[1].reply
    assert isinstance(child, TrialAssignment)
    park(h, WA, 3)
    out = h.send((WB, 8, report("wb", child, next_trial=True)))  # the run ends: both workers hear done
    assert [o.reply for o in out] == [Done(), Done()]
    assert h.session.peers_not_done() == set()  # the supervisor is not waited for
    # a second host that says hello after the end: waited for only while its worker is
    other = b"supervisor-2"
    h.send((other, 1, Hello("supervisor-2", "node2", 2, "", "", ("wc",))))
    assert h.session.peers_not_done() == set()  # its worker never spoke: nobody to wait for
    assert only(h.send((b"wc", 1, RequestTrial("wc")))).reply == Done()
    assert h.session.peers_not_done() == set()

    # mid-run: a host whose one leaseholder died is waited for until that worker is reported lost
    h = Harness()
    h.send((SUP, 1, Hello("supervisor-1", "node1", 1, "", "", ("wa", "wb"))))
    lease_first(h)
    assert h.session.peers_not_done() == {"wa", "supervisor-1"}
    h.send((SUP, 2, WorkerLost("wa", "SIGKILL")))
    assert h.session.peers_not_done() == set()


def test_a_peer_silent_for_the_silence_limit_is_not_waited_for() -> None:
    """A lost node takes its host along: nobody says ``worker_lost`` for its workers. At the end
    no trial runs, so a live peer speaks every few seconds; one silent for ``SILENT_S`` is gone."""
    h = Harness()
    h.send((SUP, 1, Hello("supervisor-1", "node2", 1, "", "", ("wa",))))
    lease_first(h)
    h.now = SILENT_S
    assert h.session.peers_not_done() == {"wa", "supervisor-1"}  # not yet
    h.now = SILENT_S + 0.5
    assert h.session.peers_not_done() == set()
    h.send((b"wb", 1, Hello("wb", "node1", 2, "cpu")))  # a live one that speaks now is waited for
    assert h.session.peers_not_done() == {"wb"}


def test_a_resend_of_a_held_request_is_dropped_and_it_is_answered_once() -> None:
    h = Harness()
    spec = lease_first(h)
    park(h)
    handled = len(h.handled)
    step = h.session.receive([(WB, 7, RequestTrial("wb"))])
    assert step.send == [] and step.messages == []  # its answer is coming
    assert len(h.handled) == handled and WB in h.session.parked
    out = h.send((WA, 2, report("wa", spec)))
    assert [o.request_id for o in out if o.peer == WB] == [7]


def test_a_new_request_from_a_peer_with_a_held_one_replaces_it() -> None:
    h = Harness()
    spec = lease_first(h)
    park(h, WB, 7)
    h.now = 1.0
    assert h.send((WB, 8, RequestTrial("wb"))) == []  # restarted: the new request is held instead
    assert h.session.parked[WB] == Parked(8, "wb", 1.0)
    out = h.send((WA, 2, report("wa", spec)))
    assert [(o.peer, o.request_id) for o in out] == [(WA, 2), (WB, 8)]  # nothing for the old id 7
    # whatever the new request is: a restarted worker saying hello abandons its held request
    park(h, WA, 3)
    assert h.send((WA, 4, Hello("wa"))) == [Outgoing(WA, 4, Ack(h.core.run_id))]
    assert h.session.parked == {}
    child = out[1].reply
    assert isinstance(child, TrialAssignment)
    assert h.send((WB, 9, report("wb", child))) == [Outgoing(WB, 9, Ack())]  # the run ends: no done for id 3


def test_held_requests_are_answered_wait_zero_after_the_park_time() -> None:
    h = Harness(park_s=2.0)
    lease_first(h)
    park(h)
    h.now = 1.5
    assert h.tick() == [] and h.session.next_deadline() == 2.0
    # a batch that can create work (here it does not) re-asks the held request; the limit
    # still counts from when wb asked, not from the re-ask
    assert h.send((SUP, 1, WorkerLost("nobody"))) == [Outgoing(SUP, 1, Ack())]
    assert isinstance(h.handled[-1], RequestTrial) and h.session.parked[WB].since == 0.0
    h.now = 1.999
    assert h.session.release_overdue() == []
    h.now = 2.0
    assert h.tick() == [Outgoing(WB, 7, Wait(0.0))]
    assert h.session.parked == {} and h.session.cached(WB) == (7, Wait(0.0))


def test_a_held_request_re_asked_after_its_time_is_answered_wait_zero_at_once() -> None:
    h = Harness(park_s=2.0)
    lease_first(h)
    park(h)
    h.now = 2.5  # no tick in between: the re-ask answers it
    out = h.send((SUP, 1, WorkerLost("nobody")))
    assert out == [Outgoing(SUP, 1, Ack()), Outgoing(WB, 7, Wait(0.0))]


def test_a_lease_expiry_re_asks_held_requests_at_the_tick() -> None:
    h = Harness(park_s=100.0, lease_s=10.0)
    lease_first(h)
    park(h)
    h.now = 11.0  # wa went silent: its lease expires
    out = only(h.tick())
    assert (out.peer, out.request_id) == (WB, 7)
    assert isinstance(out.reply, TrialAssignment) and (out.reply.trial_id, out.reply.attempt) == (1, 2)


def test_worker_lost_drops_the_lost_worker_s_held_request() -> None:
    h = Harness()
    spec = lease_first(h)
    park(h)
    assert h.send((SUP, 1, WorkerLost("wb", "SIGKILL"))) == [Outgoing(SUP, 1, Ack())]
    assert h.session.parked == {}
    # work appears: the lost worker's old request is neither re-asked nor answered
    assert h.send((WA, 2, report("wa", spec))) == [Outgoing(WA, 2, Ack())]
    assert h.handled.count(RequestTrial("wb")) == 1  # only when it first asked
    assert h.status(2) == (TrialStatus.PENDING, 1)  # the child waits for a live worker
    # a lost worker is no longer waited for at exit
    assert "wa" in h.session.peers_seen
    h.send((SUP, 2, WorkerLost("wa")))
    assert "wa" not in h.session.peers_not_done()


def test_without_a_park_time_the_core_s_wait_is_sent_as_is() -> None:
    h = Harness(park_s=0.0)
    lease_first(h)
    assert h.send((WB, 7, RequestTrial("wb"))) == [Outgoing(WB, 7, Wait(5.0))]
    assert h.session.parked == {}


# --- the sender check -------------------------------------------------------------------------------------
def test_a_body_worker_that_is_not_the_sender_is_refused_not_leaseholder() -> None:
    h = Harness()
    for message in (RequestTrial("wb"), Heartbeat("wb", 1, 1, 0), Fail("wb", 1, 1, "boom"), Hello("wb")):
        out = only(h.send((WA, 1, message)))
        assert isinstance(out.reply, Error) and out.reply.code == "not_leaseholder", message
    assert h.handled == [] and h.status(1) == (TrialStatus.PENDING, 1)  # the core never saw them
    assert h.session.peers_seen == set() and h.session.cached(WA) is None  # a rejection is not an answer
    # a supervisor speaks about another worker by design; it is nobody's worker to wait for
    assert only(h.send((SUP, 1, WorkerLost("wa")))).reply == Ack()
    assert isinstance(h.handled[-1], WorkerLost)
    assert h.session.peers_seen == set()


def test_rejections_are_logged_once_per_code_per_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    session = ProtocolSession(clock=lambda: now[0], logger=logging.getLogger("test.session"))
    with caplog.at_level(logging.WARNING, logger="test.session"):
        for request_id in range(5):
            session.receive([(WA, request_id, RequestTrial("wb"))])
        now[0] = 61.0
        session.receive([(WA, 99, RequestTrial("wb"))])
    lines = [r.getMessage() for r in caplog.records if r.name == "test.session"]
    assert len(lines) == 2 and all("not_leaseholder" in line for line in lines)
    assert "4 similar suppressed" in lines[1]


# --- the simulator drives the same session ----------------------------------------------------------------
def test_simulated_lost_replies_are_answered_from_the_cache_and_waits_are_held() -> None:
    from pbt_actors.tools.sim import LearningCurve, SimConfig, simulate
    from pbt_actors.tools.verify import verify_store

    curve = LearningCurve(max_steps=300, steps_per_trial=30)
    config = SimConfig(workers=5, speed_spread=0.3, duration_cv=0.2, preempt_rate=1.0, graceful=0.3,
                       reply_loss=0.3, resend_s=5.0)
    result, sim = simulate(curve, policy="initiator", population=4, seed=7, config=config)
    assert result.finished and not result.errors
    assert result.resends > 10 and result.held > 10  # both paths were exercised
    # a resent request for work or report(next) handled afresh would release the trial it had
    # leased (a loss); with the cache, every loss is a preemption
    assert sum(t.losses for t in sim.store.iter_trials()) == result.trials_lost
    assert result.wasted_s == pytest.approx(result.lost_s, abs=1e-6)
    assert verify_store(sim.store, None).ok
    again, _ = simulate(curve, policy="initiator", population=4, seed=7, config=config)
    assert again.to_dict() | {"wall_s": 0} == result.to_dict() | {"wall_s": 0}
    # no long poll (park_s = 0): nothing held, the core's wait answers
    plain, _ = simulate(curve, policy="initiator", population=4, seed=7, config=replace(config, park_s=0.0))
    assert plain.finished and plain.held == 0 and not plain.errors
