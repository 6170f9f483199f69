"""The pure rules of ``pbt_actors.control.deadlines`` and the restart rule that uses trial
markers (DESIGN §10, "Trial deadlines"): timeouts, and whom a death counts against."""

from __future__ import annotations

import pytest

from pbt_actors.control import deadlines
from pbt_actors.control.core import ControllerCore
from pbt_actors.control.deadlines import (
    AUTO,
    completed_durations,
    death_is_failure,
    effective_timeout,
    is_timeout_error,
    timed_out,
    timeout_error,
)
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import AttemptRecord, Origin, OriginKind, Trial, TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.runtime.restart_rules import Backoff, Intensity, Restart, RestartTracker
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.transport.messages import RequestTrial, TrialAssignment, WorkerLost

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize(("configured", "durations", "expected"), [
    (None, [1.0], None), (0, [1.0], None), (0.0, [], None), (12.5, [], 12.5), (12.5, [100.0], 12.5),
    (AUTO, [], None),  # nothing observed yet: nothing to derive a limit from
    (AUTO, [1.0, 2.0, 30.0], deadlines.AUTO_FLOOR_S),  # 10 × median 2 s = 20 s < the floor
    (AUTO, [10.0, 20.0, 30.0, 1000.0], 250.0),  # 10 × median 25 s
])
def test_the_effective_timeout(configured: object, durations: list[float], expected: float | None) -> None:
    assert effective_timeout(configured, durations) == expected  # type: ignore[arg-type]


def test_an_attempt_is_timed_out_only_past_its_deadline() -> None:
    assert not timed_out(100.0, 110.0, 10.0)
    assert timed_out(100.0, 110.5, 10.0)
    assert not timed_out(100.0, 1e9, None) and not timed_out(None, 1e9, 1.0)


def test_timeout_errors_are_recognisable() -> None:
    text = timeout_error(2, 12.34, 10)
    assert text == "trial timeout: attempt 2 ran 12.3s, longer than the trial timeout of 10s"
    assert is_timeout_error(text) and not is_timeout_error("worker lost") and not is_timeout_error(None)


def test_durations_come_from_the_completing_attempt() -> None:
    trial = Trial(1, 0, {}, 0, 5, Origin(OriginKind.SEED), status=TrialStatus.COMPLETED, completed_attempt=2,
                  history=(AttemptRecord(1, "w", 0.0, 100.0), AttemptRecord(2, "w", 200.0, 203.0)))
    assert completed_durations([trial]) == [3.0]


def test_the_first_death_is_a_loss_the_later_ones_failures() -> None:
    assert [death_is_failure(n) for n in (1, 2, 3)] == [False, True, True]


def test_the_controller_fails_a_trial_that_keeps_killing_its_worker() -> None:
    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=1, steps_per_trial=5, max_steps=5,
                                                           max_attempts=2, max_losses=10))
    for n in (1, 2, 3):
        spec = core.handle(RequestTrial("w"), float(n))
        assert isinstance(spec, TrialAssignment) and spec.attempt == n
        core.handle(WorkerLost("w", "process exited with code -9"), float(n))
    trial = core.store.get_trial(1)
    assert trial.status is TrialStatus.FAILED  # after 1 loss + 2 failures, not 10 losses
    assert (trial.deaths, trial.losses, trial.attempt) == (3, 1, 3)
    assert "death 3 of a worker running this trial: counted as its failure" in (trial.error or "")


def tracker() -> RestartTracker:
    return RestartTracker(Intensity(max_restarts=2, within_s=60), Backoff(initial_s=1.0, factor=2.0))


def test_deaths_explained_by_a_trial_that_killed_before_do_not_count_against_the_host() -> None:
    t = tracker()
    first = t.on_exit(Restart.PERMANENT, -9, 0.0, 1.0, trial=7)
    assert first.restart and not first.explained and first.delay_s == 1.0
    for now in (2.0, 3.0, 4.0, 5.0, 6.0):  # the same trial again and again: never gives up
        again = t.on_exit(Restart.PERMANENT, -9, now - 0.5, now, trial=7)
        assert again.restart and again.explained and again.delay_s == 1.0 and not again.give_up
        assert "trial 7, which killed this worker before" in again.reason
    assert len(t.restarts) == 1 and t.consecutive == 1


def test_a_host_that_kills_every_trial_still_gives_up() -> None:
    t = tracker()
    assert t.on_exit(Restart.PERMANENT, 70, 0.0, 1.0, trial=1).restart
    assert t.on_exit(Restart.PERMANENT, 70, 1.0, 2.0, trial=2).restart
    third = t.on_exit(Restart.PERMANENT, 70, 2.0, 3.0, trial=3)
    assert third.give_up and not third.restart
    # and deaths outside any trial (an import error) count as before
    t = tracker()
    assert t.on_exit(Restart.PERMANENT, 1, 0.0, 1.0).restart
    assert t.on_exit(Restart.PERMANENT, 1, 1.0, 2.0).restart
    assert t.on_exit(Restart.PERMANENT, 1, 2.0, 3.0).give_up


def test_a_normal_exit_is_never_explained() -> None:
    decision = tracker().on_exit(Restart.TRANSIENT, 0, 0.0, 1.0, trial=7)
    assert not decision.restart and not decision.explained


def test_the_tick_fails_an_attempt_past_its_timeout_and_its_heartbeat_hears_stop() -> None:
    from pbt_actors.transport.messages import Ack, Heartbeat, Stop

    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=1, steps_per_trial=5, max_steps=5,
                                                           max_attempts=2, lease_s=100, trial_timeout_s=10))
    spec = core.handle(RequestTrial("w"), 0.0)
    assert isinstance(spec, TrialAssignment)
    assert core.handle(Heartbeat("w", 1, 1, 1, None), 9.0) == Ack()
    assert core.tick(9.5) == []
    assert core.tick(10.5) == [1]  # the lease is fine (heartbeats renew it); the attempt is too long
    trial = core.store.get_trial(1)
    assert trial.status is TrialStatus.PENDING and trial.attempt == 2 and trial.losses == 0
    assert (trial.error or "").startswith("trial timeout: attempt 1 ran 10.5s")
    reply = core.handle(Heartbeat("w", 1, 1, 2, None), 11.0)
    assert isinstance(reply, Stop) and reply.reason.startswith("trial timeout")


def test_auto_timeout_waits_for_observed_durations() -> None:
    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=1, steps_per_trial=5, max_steps=5,
                                                           lease_s=1e9, trial_timeout_s=AUTO))
    core.handle(RequestTrial("w"), 0.0)
    assert core.tick(1e6) == []  # nothing completed yet: no limit
