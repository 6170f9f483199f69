"""The pure rules of ``pbt_actors.control.deadlines`` and the restart rule that uses trial
markers (docs/design.md §6.5 and §6.4): timeouts, and whom a death counts against."""

from __future__ import annotations

import pytest

from pbt_actors.control import deadlines
from pbt_actors.control.core import ControllerCore
from pbt_actors.control.deadlines import (
    AUTO,
    attempt_steps,
    completed_durations,
    completed_rates,
    death_is_failure,
    effective_timeout,
    is_timeout_error,
    timed_out,
    timeout_error,
)
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import RequestTrial, TrialAssignment, WorkerLost
from pbt_actors.model.records import AttemptRecord, CheckpointRef, Origin, OriginKind, Trial, TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.runtime.host.restart_rules import Backoff, Intensity, Restart, RestartTracker
from pbt_actors.storage.memory import InMemoryTrialStore

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize(("configured", "durations", "expected"), [
    (None, [1.0], None), (0, [1.0], None), (0.0, [], None), (12.5, [], 12.5), (12.5, [100.0], 12.5),
    (AUTO, [], deadlines.AUTO_FIRST_FLOOR_S),  # nothing observed yet: the first-trial ceiling (issue 20, item 8)
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
    trial = Trial(
        1,
        generation=0,
        hparams={},
        start_step=0,
        end_step=5,
        origin=Origin(OriginKind.SEED),
        status=TrialStatus.COMPLETED,
        completed_attempt=2,
        history=(AttemptRecord(1, "w", 0.0, 100.0), AttemptRecord(2, "w", 200.0, 203.0)),
    )
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


def test_a_death_in_a_trial_after_others_finished_is_the_trials_from_the_first_one() -> None:
    """Issue 20, item 6: random deaths over different trials (out of memory on some
    configurations) used to count against the host once per trial; a process that had finished
    trials before proved the host can train, so its death is the trial's from the first."""
    t = tracker()
    for n in range(1, 20):  # a different trial each time
        decision = t.on_exit(Restart.PERMANENT, -9, n - 0.5, float(n), trial=n, proven=True)
        assert decision.restart and decision.explained and not decision.give_up and decision.delay_s == 1.0
        assert f"running trial {n}, after this process had finished others" in decision.reason
    assert not t.restarts and t.consecutive == 0
    again = t.on_exit(Restart.PERMANENT, -9, 30.0, 30.5, trial=19)  # a fresh process, killed by trial 19 again
    assert again.explained and "which killed this worker before" in again.reason


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
    from pbt_actors.model.protocol import Ack, Heartbeat, Stop

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


def test_auto_timeout_before_any_completion_is_the_first_trial_ceiling() -> None:
    """Issue 20, item 8: with "auto", a run whose first trials all hang used to wait forever
    (no attempt completed, so no limit); now they time out at the first-trial ceiling, and a
    run of hung trials ends with them FAILED, not never."""
    from pbt_actors.model.protocol import Done, Heartbeat

    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=2, steps_per_trial=10, max_steps=10,
                                                           max_attempts=1, max_replacements=0, lease_s=1e9,
                                                           trial_timeout_s=AUTO))
    ceiling = max(deadlines.AUTO_FIRST_STEP_S * 10, deadlines.AUTO_FIRST_FLOOR_S)
    assert effective_timeout(AUTO, [], 10) == ceiling == 6000.0
    for worker in ("a", "b"):
        assert isinstance(core.handle(RequestTrial(worker), 0.0), TrialAssignment)
    now = 0.0
    while now < ceiling:  # the hung attempts keep their leases alive, and report nothing
        now += 1000.0
        for trial_id, worker in ((1, "a"), (2, "b")):
            core.handle(Heartbeat(worker, trial_id, 1, 0, None), now)
        assert core.tick(now - 1) == []  # not before the ceiling
    assert sorted(core.tick(ceiling + 1)) == [1, 2]
    for trial in core.store.trials([1, 2]):
        assert trial.status is TrialStatus.FAILED and (trial.error or "").startswith("trial timeout"), trial
    assert core.handle(RequestTrial("a"), ceiling + 2) == Done()


# --- "auto", the default: per step of what the attempt trains (issue item 10) -----------------------
def completed(trial_id: int, steps: int, seconds: float, resumed_at: int | None = None) -> Trial:
    """A COMPLETED trial of ``steps`` steps whose completing attempt (2) took ``seconds``;
    with ``resumed_at`` that attempt resumed a preemption checkpoint of that step."""
    resume = CheckpointRef(f"r{trial_id}", 1, "0" * 64, resumed_at) if resumed_at is not None else None
    return Trial(
        trial_id,
        generation=0,
        hparams={},
        start_step=0,
        end_step=steps,
        origin=Origin(OriginKind.SEED),
        status=TrialStatus.COMPLETED,
        completed_attempt=2,
        resume=resume,
        history=(AttemptRecord(1, "w", 0.0, 50.0), AttemptRecord(2, "w", 100.0, 100.0 + seconds)),
    )


def test_the_default_trial_timeout_is_auto() -> None:
    assert Experiment(name="e", space={"x": Float(0, 1)}, objective="Q").trial_timeout_s == AUTO


def test_an_attempt_trains_from_its_resume_checkpoint_or_its_start() -> None:
    assert attempt_steps(completed(1, 10, 1.0)) == 10
    assert attempt_steps(completed(1, 10, 1.0, resumed_at=8)) == 2
    assert attempt_steps(completed(1, 10, 1.0, resumed_at=10)) == 1  # never 0: no division by zero


def test_rates_are_seconds_per_step_trained() -> None:
    assert completed_rates([completed(1, 10, 20.0), completed(2, 10, 4.0, resumed_at=8)]) == [2.0, 2.0]


@pytest.mark.parametrize(("rates", "steps", "expected"), [
    ([2.0], 100, 2000.0),  # 10 × 2 s/step × 100 steps
    ([2.0], 2, deadlines.AUTO_FLOOR_S),  # a resumed attempt with 2 steps left: the floor
    ([1.0, 2.0, 3.0], 10, 200.0),  # the median rate
    ([], 100, 100 * deadlines.AUTO_FIRST_STEP_S),  # none completed yet: the first-trial ceiling
])
def test_the_auto_timeout_scales_with_the_attempts_steps(rates: list[float], steps: int,
                                                         expected: float | None) -> None:
    assert effective_timeout(AUTO, rates, steps) == expected


def test_resumed_attempts_do_not_pull_the_auto_timeout_below_a_full_attempt() -> None:
    # three attempts resumed with 1 step of 100 left (1 s each) and one full attempt (100 s):
    # the median duration is 1 s (a 60 s limit would time out every healthy full attempt),
    # the median rate is 1 s/step (a full attempt gets 1000 s, a resumed one the floor)
    trials = [completed(i, 100, 1.0, resumed_at=99) for i in (1, 2, 3)] + [completed(4, 100, 100.0)]
    assert effective_timeout(AUTO, completed_durations(trials)) == deadlines.AUTO_FLOOR_S  # the old rule
    rates = completed_rates(trials)
    assert effective_timeout(AUTO, rates, 100) == 1000.0
    assert effective_timeout(AUTO, rates, 1) == deadlines.AUTO_FLOOR_S


def test_the_tick_times_each_attempt_by_its_own_steps() -> None:
    store = InMemoryTrialStore()
    core = ControllerCore(store, Experiment(name="e", space={"x": Float(0, 1)}, objective="Q", population=2,
                                            steps_per_trial=100, max_steps=100, lease_s=1e9))  # the default: auto
    first, second = core.handle(RequestTrial("a"), 0.0), core.handle(RequestTrial("b"), 0.0)
    assert isinstance(first, TrialAssignment) and isinstance(second, TrialAssignment)
    from pbt_actors.model.protocol import Report
    core.handle(Report("a", first.trial_id, 1, {"Q": 1.0}), 100.0)  # 100 steps in 100 s: 1 s/step
    assert store.get_trial(first.trial_id).status is TrialStatus.COMPLETED
    assert core.tick(999.0) == []  # the other full attempt may run 10 × 100 s
    assert core.tick(1000.5) == [second.trial_id]
    assert is_timeout_error(store.get_trial(second.trial_id).error)
