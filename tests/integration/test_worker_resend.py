"""A report the controller failed to apply (``error(internal)``) is sent again by the worker.

Real controller (actor, bridge, ZeroMQ over tcp loopback, LMDB) and a real ``WorkerClient``; the
fault is injected into the controller core: its first two attempts to apply the report raise,
so the batch is rolled back and the worker is told ``internal``. The trial must still complete
as attempt 1, long before its (one hour) lease could expire.

Below it, the worker's one retry loop (``retry_loop.send_until_answered``) with scripted rounds and a fake
clock: resent forever while healthy, for the grace period once preempted, ``error(internal)``
sent again after the common backoff's delays, 8 times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

import pbt_actors.runtime.worker.retry_loop as retry_module
from pbt_actors.common.backoff import Backoff
from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import Ack, Error, Message, Report, RequestTrial
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.runtime.worker.retry_loop import send_until_answered
from pbt_actors.runtime.worker.worker_client import WorkerClient
from tests.support.runs import TOY

pytestmark = pytest.mark.timeout(120)


def test_a_report_answered_internal_error_is_sent_again_until_applied(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    experiment, train = load_experiment_file(TOY)
    experiment = replace(experiment, lease_s=3600.0)
    monkeypatch.setattr(retry_module, "INTERNAL_ERROR_BACKOFF", Backoff(initial_s=0.05, factor=2.0, max_s=1.0))
    attempts: list[int] = []
    original = ControllerCore._report

    def failing_twice(self, msg, now):  # type: ignore[no-untyped-def]
        attempts.append(msg.trial_id)
        if len(attempts) <= 2:
            raise RuntimeError("injected: the store is having a bad day")
        return original(self, msg, now)

    monkeypatch.setattr(ControllerCore, "_report", failing_twice)
    handle = Controller.start(experiment, tmp_path / "store", "tcp://127.0.0.1:0")
    client = WorkerClient(handle.endpoint, train, str(tmp_path / "ckpt"), worker_id="resender")
    try:
        assert client.run_one()
        assert client.flush_writes(60)  # the checkpoint is written in the background: completed once durable
        status = handle.status()
        assert status.by_status["completed"] == 1 and status.by_status["running"] in (0, 1)
        assert attempts[:3] == [1, 1, 1]  # refused twice, applied the third time
    finally:
        client.close()
        handle.stop()
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    with LmdbTrialStore(tmp_path / "store", readonly=True) as store:
        first = store.get_trial(1)
        assert first.status is TrialStatus.COMPLETED and first.completed_attempt == 1 and first.attempt == 1


# --- the worker's one retry loop (``retry_loop.send_until_answered``), without a network ----------------------
class FakePreempt:
    """``WorkerClient.preempt`` stand-in: records the pauses instead of sleeping."""

    def __init__(self) -> None:
        self.flag = False
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.flag


class ScriptedRounds:
    """Rounds that answer from ``replies`` (None: the round timed out), and the loop over them."""

    def __init__(self, replies: Sequence[Message | None]) -> None:
        self.replies = list(replies)
        self.preempt = FakePreempt()
        self.sent: list[Message] = []

    def round_trip(self, message: Message, retries: int) -> Message:
        assert retries == retry_module.RESENDS_PER_ROUND
        self.sent.append(message)
        reply = self.replies.pop(0)
        if reply is None:
            raise RequestTimeout(message.TYPE, len(self.sent), 3, 35.0)
        return reply

    def send(self, message: Message, *, grace_s: float | None, internal_retries: int = 0) -> Message | None:
        return send_until_answered(self.round_trip, message, preempt=self.preempt, check_gone=lambda: None,
                                   grace_s=grace_s, internal_retries=internal_retries)


REPORT = Report("w", 1, 1, {"loss": 1.0})
INTERNAL = Error("internal", "rolled back")


def test_a_report_is_resent_round_after_round_while_healthy() -> None:
    rounds = ScriptedRounds([None] * 50 + [Ack()])
    assert rounds.send(REPORT, grace_s=retry_module.PREEMPT_GRACE_S) == Ack()
    assert len(rounds.sent) == 51 and rounds.preempt.waits == []


def test_internal_errors_are_resent_with_the_backoff_then_given_up() -> None:
    rounds = ScriptedRounds([INTERNAL] * 20)
    reply = rounds.send(REPORT, grace_s=retry_module.PREEMPT_GRACE_S,
                        internal_retries=retry_module.INTERNAL_ERROR_RETRIES)
    assert reply == INTERNAL
    assert len(rounds.sent) == 1 + retry_module.INTERNAL_ERROR_RETRIES
    expected = [retry_module.INTERNAL_ERROR_BACKOFF.delay(n) for n in range(retry_module.INTERNAL_ERROR_RETRIES)]
    assert rounds.preempt.waits == pytest.approx(expected)
    assert rounds.preempt.waits[:3] == pytest.approx([0.2, 0.4, 0.8])


def test_an_internal_error_then_an_ack() -> None:
    rounds = ScriptedRounds([INTERNAL, None, Ack()])
    assert rounds.send(REPORT, grace_s=20.0, internal_retries=8) == Ack()
    assert len(rounds.sent) == 3 and len(rounds.preempt.waits) == 1


def test_once_preempted_a_report_gets_the_grace_period_and_a_request_none(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(retry_module.time, "monotonic", lambda: now[0])
    rounds = ScriptedRounds([None] * 100)
    rounds.preempt.flag = True

    scripted = rounds.round_trip

    def advancing(message: Message, retries: int) -> Message:
        now[0] += 7.0  # each silent round takes a while
        return scripted(message, retries)

    rounds.round_trip = advancing  # type: ignore[method-assign]
    assert rounds.send(REPORT, grace_s=20.0) is None
    assert len(rounds.sent) == 4  # noticed at 7 s; rounds until more than 20 s later: 14, 21, 28 s
    rounds.sent.clear()
    assert rounds.send(RequestTrial("w"), grace_s=None) is None
    assert len(rounds.sent) == 1


def test_an_internal_error_is_not_resent_once_preempted() -> None:
    rounds = ScriptedRounds([INTERNAL, Ack()])
    rounds.preempt.flag = True
    assert rounds.send(REPORT, grace_s=20.0, internal_retries=8) == INTERNAL
    assert len(rounds.sent) == 1 and rounds.preempt.waits == []
