"""Long poll and ``report(next)`` through the real controller: ZeroMQ over tcp loopback, LMDB.

A request for work that finds nothing to run is held by the controller (its protocol session,
``pbt_actors.control.session``, in front of the core) and answered the moment a report creates
a trial or ends the run, instead of ``wait`` (after which the worker would sleep). Each worker
endpoint lives in its own thread (ZeroMQ sockets are not thread-safe); waits are deadlines on
queues, never sleeps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pbt_actors.control.session as session_module
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import Done, Hello, Message, Report, RequestTrial, TrialAssignment, Wait, WorkerLost
from pbt_actors.model.records import CheckpointRef, trial_checkpoint_prefix
from pbt_actors.model.space import Float
from pbt_actors.runtime.controller.controller_actor import Controller, ControllerHandle
from pbt_actors.transport.endpoints import WorkerEndpoint

pytestmark = pytest.mark.timeout(60)


def chain_experiment() -> Experiment:
    """One member, two generations: trial 1, then its child 2, then done."""
    return Experiment(name="longpoll", space={"x": Float(0.0, 1.0)}, objective="score", population=1,
                      steps_per_trial=1, max_steps=2, lease_s=600, seed=1)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerHandle]:
    handle = Controller.start(chain_experiment(), tmp_path / "store", "tcp://127.0.0.1:0")
    try:
        yield handle
    finally:
        handle.stop()


class Worker(threading.Thread):
    """A worker endpoint on its own thread; ``ask`` queues a request, ``replies`` gets answers."""

    def __init__(self, address: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.address, self.name = address, name
        self.requests: queue.Queue[Message | None] = queue.Queue()
        self.replies: queue.Queue[tuple[Message, float]] = queue.Queue()
        self.start()

    def run(self) -> None:
        endpoint = WorkerEndpoint(self.address, self.name)
        try:
            while (message := self.requests.get()) is not None:
                self.replies.put((endpoint.request(message, timeout_s=10), time.monotonic()))
        finally:
            endpoint.close()

    def ask(self, message: Message) -> None:
        self.requests.put(message)

    def reply(self, timeout_s: float = 20) -> tuple[Message, float]:
        return self.replies.get(timeout=timeout_s)

    def close(self) -> None:
        self.requests.put(None)
        self.join(10)


def report_for(worker: str, spec: TrialAssignment, *, next_trial: bool) -> Report:
    ckpt = CheckpointRef(f"{trial_checkpoint_prefix(spec.experiment, spec.trial_id)}a.ckpt", 1, "0" * 64, spec.end_step)
    return Report(worker, spec.trial_id, spec.attempt, {"score": 0.5}, (), ckpt, next=next_trial)


def test_a_held_request_gets_the_trial_a_report_creates_and_done_when_the_run_ends(
        controller: ControllerHandle) -> None:
    a, b = Worker(controller.endpoint, "wa"), Worker(controller.endpoint, "wb")
    try:
        a.ask(RequestTrial("wa"))
        first, _ = a.reply()
        assert isinstance(first, TrialAssignment) and first.trial_id == 1
        b.ask(RequestTrial("wb"))  # nothing to run: held, not answered `wait`
        with pytest.raises(queue.Empty):
            b.replies.get(timeout=0.5)
        a.ask(report_for("wa", first, next_trial=False))
        ack, acked_at = a.reply()
        assert ack.TYPE == "ack"
        child, child_at = b.reply()
        assert isinstance(child, TrialAssignment) and child.trial_id == 2 and child.parent_id == 1
        assert child_at - acked_at < 1.0  # answered with the report's batch, not after a wait
        a.ask(RequestTrial("wa"))  # trial 2 still runs: held again
        with pytest.raises(queue.Empty):
            a.replies.get(timeout=0.3)
        b.ask(report_for("wb", child, next_trial=True))  # the last report: the run ends
        done_b, _ = b.reply()
        done_a, _ = a.reply()
        assert isinstance(done_b, Done) and isinstance(done_a, Done)
        assert controller.status().finished
    finally:
        a.close()
        b.close()


def test_a_held_request_is_answered_wait_zero_after_the_park_limit(controller: ControllerHandle,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "PARK_S", 0.3)  # read at each use by the bridge's session
    a, b = Worker(controller.endpoint, "wa"), Worker(controller.endpoint, "wb")
    try:
        a.ask(RequestTrial("wa"))
        first, _ = a.reply()
        assert isinstance(first, TrialAssignment)
        started = time.monotonic()
        b.ask(RequestTrial("wb"))
        held, answered_at = b.reply()
        assert isinstance(held, Wait) and held.retry_after_s == 0.0
        assert answered_at - started >= 0.3
    finally:
        a.close()
        b.close()


def test_a_lost_worker_s_trial_goes_at_once_to_a_held_request(controller: ControllerHandle) -> None:
    a, b = Worker(controller.endpoint, "wa"), Worker(controller.endpoint, "wb")
    supervisor = Worker(controller.endpoint, "supervisor-host-1")
    try:
        a.ask(RequestTrial("wa"))
        first, _ = a.reply()
        assert isinstance(first, TrialAssignment) and first.trial_id == 1
        b.ask(RequestTrial("wb"))  # held: the only trial runs on wa
        with pytest.raises(queue.Empty):
            b.replies.get(timeout=0.3)
        supervisor.ask(Hello("supervisor-host-1", host="host-1", workers=("wa",)))  # it owns wa
        assert supervisor.reply()[0].TYPE == "ack"
        supervisor.ask(WorkerLost("wa", "SIGKILL"))
        assert supervisor.reply()[0].TYPE == "ack"
        retry, _ = b.reply()  # the re-queued trial, without waiting for a lease or a retry
        assert isinstance(retry, TrialAssignment) and (retry.trial_id, retry.attempt) == (1, 2)
    finally:
        for worker in (a, b, supervisor):
            worker.close()
