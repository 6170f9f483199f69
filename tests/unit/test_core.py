"""ControllerCore: leases, attempts, idempotent reports, failures, end of experiment, determinism."""

from __future__ import annotations

import math

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import EarlyStop, Experiment
from pbt_actors.model.protocol import (
    Ack,
    Done,
    Error,
    Fail,
    Heartbeat,
    Hello,
    Report,
    RequestTrial,
    Stop,
    TrialAssignment,
    Wait,
    WorkerLost,
)
from pbt_actors.model.records import OriginKind, TrialStatus
from pbt_actors.model.space import Categorical, Float
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.driver import Driver, fake_checkpoint, graph, random_run

pytestmark = pytest.mark.timeout(60)


def experiment(**overrides) -> Experiment:
    settings = dict(name="core", space={"lr": Float(1e-4, 1.0, log=True), "opt": Categorical(["sgd", "adam"])},
                    objective="score", population=3, steps_per_trial=10, max_steps=30, seed=3,
                    lease_s=10.0, max_attempts=3)
    settings.update(overrides)
    return Experiment(**settings)


def driver(**overrides) -> Driver:
    return Driver(ControllerCore(InMemoryTrialStore(), experiment(**overrides)))


def test_initial_population_uses_explicit_configs_first_then_samples() -> None:
    d = driver(initial=[{"lr": 0.01, "opt": "adam"}, {"lr": 0.5}])
    seeds = [d.trial(i) for i in (1, 2, 3)]
    assert [t.generation for t in seeds] == [0, 0, 0]
    assert seeds[0].hparams == {"lr": 0.01, "opt": "adam"}
    assert seeds[1].hparams["lr"] == 0.5 and seeds[1].hparams["opt"] in ("sgd", "adam")
    assert all(t.origin.kind is OriginKind.SEED and t.status is TrialStatus.PENDING for t in seeds)
    assert d.store.count() == 3


def test_request_leases_the_oldest_pending_trial_and_records_the_lease() -> None:
    d = driver()
    spec = d.lease("w0")
    assert (spec.trial_id, spec.attempt, spec.start_step, spec.end_step) == (1, 1, 0, 10)
    trial = d.trial(1)
    assert trial.status is TrialStatus.RUNNING and trial.lease.worker == "w0"
    assert trial.lease.deadline == pytest.approx(d.now + 10.0)
    assert spec.parent_checkpoint is None and spec.heartbeat_s == pytest.approx(10 / 3)


def test_heartbeat_renews_the_lease_and_records_measurements() -> None:
    d = driver()
    spec = d.lease("w0")
    d.now = 8.0
    assert isinstance(d.heartbeat("w0", spec, 5, {"score": 0.3}), Ack)
    assert d.trial(1).lease.deadline == pytest.approx(18.0)
    assert d.core.tick(12.0) == []
    assert d.trial(1).measurements[-1].metrics == {"score": 0.3}
    d.heartbeat("w0", spec, 5, {"score": 0.3})  # resent by the worker's endpoint
    assert len(d.trial(1).measurements) == 1


def test_lease_expiry_requeues_with_the_next_attempt_and_the_same_spec() -> None:
    d = driver()
    spec = d.lease("w0")
    before = d.trial(1)
    assert d.core.tick(10.5) == [1]
    after = d.trial(1)
    assert after.status is TrialStatus.PENDING and after.attempt == 2 and after.lease is None
    assert (after.hparams, after.start_step, after.end_step, after.parent_id) == \
        (before.hparams, before.start_step, before.end_step, before.parent_id)
    assert "lease expired" in after.error
    d.now = 11.0
    again = d.lease("w1")
    assert (again.trial_id, again.attempt, again.hparams) == (1, 2, spec.hparams)


def test_late_report_from_an_expired_attempt_wins_and_the_newer_attempt_is_told_to_stop() -> None:
    d = driver()
    old = d.lease("w0")
    d.core.tick(11.0)
    d.now = 12.0
    new = d.lease("w1")
    assert new.attempt == 2
    assert isinstance(d.heartbeat("w0", old, 5), Ack)  # older attempt: tolerated, not renewed
    assert isinstance(d.report("w0", old, 0.7), Ack)
    trial = d.trial(1)
    assert trial.status is TrialStatus.COMPLETED and trial.completed_attempt == 1 and trial.worker == "w0"
    assert isinstance(d.heartbeat("w1", new, 5), Stop)
    children_before = d.store.count()
    assert isinstance(d.report("w1", new, 0.9), Ack)  # the second completion changes nothing
    assert d.trial(1).final == {"score": 0.7} and d.store.count() == children_before


def test_duplicate_report_is_acknowledged_without_effect() -> None:
    d = driver()
    spec = d.lease("w0")
    assert isinstance(d.report("w0", spec, 0.5), Ack)
    snapshot = graph(d.store)
    assert isinstance(d.report("w0", spec, 0.5), Ack)
    assert isinstance(d.report("w0", spec, 0.9), Ack)
    assert graph(d.store) == snapshot


def test_reports_and_heartbeats_from_a_forged_worker_are_refused() -> None:
    d = driver()
    spec = d.lease("w0")
    reply = d.report("mallory", spec, 1.0)
    assert isinstance(reply, Error) and reply.code == "not_leaseholder"
    assert isinstance(d.heartbeat("mallory", spec, 1), Error)
    assert d.trial(1).status is TrialStatus.RUNNING


def test_unknown_trial_and_future_attempt_get_errors_not_exceptions() -> None:
    d = driver()
    spec = d.lease("w0")
    unknown = d.core.handle(Report("w0", 999, 1, {"score": 1.0}), d.now)
    assert isinstance(unknown, Error) and unknown.code == "unknown_trial" and "999" in unknown.message
    future = d.core.handle(Heartbeat("w0", spec.trial_id, 5, 1), d.now)
    assert isinstance(future, Error) and future.code == "bad_attempt"
    assert isinstance(d.core.handle(Hello("w0"), d.now), Ack)


def test_worker_lost_requeues_its_trial_at_once() -> None:
    d = driver()
    d.lease("w0")
    d.lease("w1")
    assert isinstance(d.core.handle(WorkerLost("w0", "SIGKILL"), d.now), Ack)
    assert d.trial(1).status is TrialStatus.PENDING and d.trial(1).attempt == 2
    assert d.trial(2).status is TrialStatus.RUNNING
    assert "SIGKILL" in d.trial(1).error


def test_a_worker_asking_again_releases_what_it_held() -> None:
    d = driver()
    d.lease("w0")
    spec = d.lease("w0")  # restarted process, same id: its old attempt is dead
    assert (spec.trial_id, spec.attempt) == (1, 2)  # re-queued first in line, so re-leased
    past = d.trial(1).history[0]
    assert (past.attempt, past.worker) == (1, "w0")
    assert "asked for new work" in d.trial(1).error


def test_max_attempts_then_failed_and_a_replacement_keeps_evolution_going() -> None:
    d = driver(max_attempts=2)
    for attempt in (1, 2):
        spec = d.lease("w0")
        assert (spec.trial_id, spec.attempt) == (1, attempt)
        assert isinstance(d.fail("w0", spec, "CUDA OOM"), Ack)
    failed = d.trial(1)
    assert failed.status is TrialStatus.FAILED and failed.error == "CUDA OOM"
    replacement = d.trial(4)
    assert replacement.origin.kind is OriginKind.REPLACEMENT and replacement.origin.replaces == 1
    random_run(d.core, lambda n: 0, workers=2)
    assert d.core.finished
    assert d.store.count(TrialStatus.COMPLETED) > 3


def test_non_retryable_failure_fails_at_once_and_replacement_avoids_the_parent() -> None:
    d = driver(population=2)
    a, b = d.lease("w0"), d.lease("w1")
    d.report("w0", a, 0.1)
    d.report("w1", b, 0.9)
    children = [d.trial(i) for i in (3, 4)]
    bad = next(c for c in children if c.parent_id == 2)
    spec = None
    while spec is None or spec.trial_id != bad.id:
        spec = d.lease("w0")
    d.fail("w0", spec, "parent checkpoint sha256 mismatch", retryable=False)
    assert d.trial(bad.id).status is TrialStatus.FAILED and d.trial(bad.id).attempt == 1
    replacement = d.trial(d.store.count())
    assert replacement.origin.replaces == bad.id
    assert replacement.parent_id != 2


def test_experiment_ends_with_done_and_waits_while_others_run() -> None:
    d = driver(population=2, max_steps=10)
    a, b = d.lease("w0"), d.lease("w1")
    d.report("w0", a, 0.5)
    assert isinstance(d.request("w0"), Wait)
    d.report("w1", b, 0.6)
    assert isinstance(d.request("w0"), Done)
    assert d.core.finished
    assert all(t.initiated for t in d.store.iter_trials())


def test_max_trials_caps_the_experiment() -> None:
    d = driver(max_trials=5, max_steps=1000)
    random_run(d.core, lambda n: 0, workers=2)
    assert d.store.count() == 5 and d.core.finished


def test_early_stop_on_nan_stops_the_trial_and_refills_its_slot() -> None:
    d = driver(early_stop=EarlyStop())
    spec = d.lease("w0")
    reply = d.heartbeat("w0", spec, 3, {"score": math.nan})
    assert isinstance(reply, Stop) and "diverged" in reply.reason
    assert d.trial(1).status is TrialStatus.STOPPED
    assert d.trial(4).origin.replaces == 1


def test_early_stop_quantile_rule_needs_peers_at_the_same_step() -> None:
    d = driver(population=6, early_stop=EarlyStop(quantile=0.5, min_peers=3))
    specs = [d.lease(f"w{i}") for i in range(6)]
    for i, spec in enumerate(specs[:4]):
        assert isinstance(d.heartbeat(f"w{i}", spec, 5, {"score": 1.0 + i}), Ack)
    assert isinstance(d.heartbeat("w4", specs[4], 4, {"score": 0.0}), Ack)  # no peers at step 4
    reply = d.heartbeat("w5", specs[5], 5, {"score": 0.5})
    assert isinstance(reply, Stop) and "quantile" in reply.reason


def test_a_store_refuses_a_different_experiment_definition() -> None:
    store = InMemoryTrialStore()
    ControllerCore(store, experiment())
    with pytest.raises(ConfigError, match="population"):
        ControllerCore(store, experiment(population=5))
    resumed = ControllerCore(store, experiment(lease_s=99.0))  # operational settings may change
    assert resumed.experiment.lease_s == 99.0
    assert ControllerCore(store).experiment.lease_s == 99.0


def test_an_internal_error_is_answered_and_does_not_block_the_rest_of_the_batch(monkeypatch) -> None:
    d = driver()
    spec = d.lease("w0")
    calls = {"n": 0}
    original = d.core.policy.decide

    def flaky(view, event, rngs):
        calls["n"] += 1
        raise RuntimeError("policy bug")

    monkeypatch.setattr(d.core.policy, "decide", flaky)
    replies = d.core.handle_batch([Report("w0", spec.trial_id, 1, {"score": 1.0}), Hello("w1")], d.now)
    assert isinstance(replies[0], Error) and replies[0].code == "internal"
    assert isinstance(replies[1], Ack)
    assert d.trial(1).status is TrialStatus.RUNNING  # rolled back, the worker will resend
    monkeypatch.setattr(d.core.policy, "decide", original)
    assert isinstance(d.report("w0", spec, 1.0), Ack)
    assert d.trial(1).status is TrialStatus.COMPLETED


@pytest.mark.parametrize("policy", ["initiator", "truncation", "random"])
def test_same_seed_and_events_give_an_identical_trial_graph(policy: str) -> None:
    graphs = []
    for seed in (11, 11, 12):
        store = InMemoryTrialStore()
        core = ControllerCore(store, experiment(policy=policy, seed=seed, population=4, max_steps=60))
        order = iter([0, 2, 1, 0, 1, 1, 0, 2] * 200)
        random_run(core, lambda n, order=order: next(order) % n, workers=3, duplicate_prob=0.0)
        graphs.append(graph(store))
    assert graphs[0] == graphs[1]
    assert graphs[0] != graphs[2]


def test_losses_have_their_own_budget_so_preemption_storms_do_not_fail_trials() -> None:
    d = driver(max_attempts=2, max_losses=4)
    for attempt in (1, 2, 3):  # three leases lost: more than max_attempts, fewer than max_losses
        spec = d.lease("w0")
        assert spec.attempt == attempt
        assert d.core.tick(d.now + 1000) == [1]  # expired: the host vanished (no worker death seen)
    trial = d.trial(1)
    assert trial.status is TrialStatus.PENDING and trial.losses == 3
    spec = d.lease("w0")
    assert isinstance(d.fail("w0", spec, "ValueError"), Ack)  # first real failure: retried
    assert d.trial(1).status is TrialStatus.PENDING
    spec = d.lease("w0")
    d.fail("w0", spec, "ValueError")  # second real failure: max_attempts=2 reached
    assert d.trial(1).status is TrialStatus.FAILED and d.trial(1).losses == 3


def test_a_trial_that_keeps_killing_its_worker_still_ends_at_max_losses() -> None:
    d = driver(max_losses=3)
    for _ in range(3):
        d.lease("w0")
        d.core.tick(d.now + 1000)
    assert d.trial(1).status is TrialStatus.FAILED and d.trial(1).losses == 3


def test_a_trial_whose_workers_die_fails_after_one_loss_and_max_attempts_failures() -> None:
    # docs/design.md §6.4: death while running a trial counts against that trial first
    d = driver(max_attempts=2, max_losses=10)
    for _ in range(3):
        d.lease("w0")
        d.core.handle(WorkerLost("w0", "segfault"), d.now)
    trial = d.trial(1)
    assert trial.status is TrialStatus.FAILED and (trial.losses, trial.deaths) == (1, 3)


def test_a_report_with_next_is_applied_and_answered_with_the_next_trial() -> None:
    d = driver(population=2, steps_per_trial=10, max_steps=20)
    first, second = d.lease("w0"), d.lease("w1")
    reply = d.core.handle(Report("w0", first.trial_id, first.attempt, {"score": 1.0}, (),
                                 fake_checkpoint(first.trial_id, 1, 10, first.experiment), next=True), d.now)
    assert d.trial(first.trial_id).status is TrialStatus.COMPLETED  # applied, like a plain report
    assert isinstance(reply, TrialAssignment) and reply.trial_id not in (first.trial_id, second.trial_id)
    assert d.trial(reply.trial_id).lease.worker == "w0"
    # a refused report leases nothing: the worker gets the error, not a trial
    refused = d.core.handle(Report("w9", second.trial_id, second.attempt, {"score": 1.0}, next=True), d.now)
    assert isinstance(refused, Error) and refused.code == "not_leaseholder"
    assert d.store.running_leased_to("w9") == []
    # nothing left to lease while the last trials run: the answer is what request_trial gets
    done = d.core.handle(Report("w1", second.trial_id, second.attempt, {"score": 0.5}, (),
                                fake_checkpoint(second.trial_id, 1, 10, second.experiment), next=True), d.now)
    assert isinstance(done, TrialAssignment | Wait)


def test_a_checkpoint_store_fault_requeues_uncharged_and_leases_nothing_more() -> None:
    """Issue 20, item 4: ``fail(fault=checkpoint_store)`` is the store's fault: with
    ``max_attempts=1`` and ``max_losses=1`` the trial still goes back to PENDING, nothing more is
    leased (every trial would fail on the store), and the run is not finished."""
    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=2, steps_per_trial=5, max_steps=10,
                                                           max_attempts=1, max_losses=1))
    first = core.handle(RequestTrial("w1"), 1.0)
    assert isinstance(first, TrialAssignment)
    for n in range(3):  # again and again: never FAILED
        assert core.handle(Fail("w1", first.trial_id, first.attempt + n, "CheckpointStoreFault: disk full",
                                fault="checkpoint_store"), 2.0 + n) == Ack()
        trial = core.store.get_trial(first.trial_id)
        assert trial.status is TrialStatus.PENDING and trial.attempt == first.attempt + n + 1
        core.checkpoint_store_fault = None  # (a rerun's core starts without it)
        assert isinstance(core.handle(RequestTrial("w1"), 2.5 + n), TrialAssignment)
    core.handle(Fail("w1", first.trial_id, 4, "CheckpointStoreFault: disk full", fault="checkpoint_store"), 9.0)
    assert core.checkpoint_store_fault == "CheckpointStoreFault: disk full"
    assert isinstance(core.handle(RequestTrial("w2"), 10.0), Wait)  # nothing more is leased
    assert not core.finished and core.store.count(TrialStatus.FAILED) == 0
