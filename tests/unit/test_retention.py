"""Retention (control/retention_rules.py): never deletes a future parent, and stays within its bound.

The property test drives the pure ``ControllerCore`` over an in-memory store through random
runs (every policy, budget mode, failures, graceful preemptions, lost workers, early stops);
after every event it carries out retention's plan (drops the checkpoints from the index and
records them collected, as the controller's collector does), then checks that every trial
leased afterwards finds its parent's checkpoint, and that the number held is within the bound.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.retention_rules import (
    BEST,
    LINEAGE,
    META_PINS,
    PINNED,
    plan_retention,
    record_collected,
)
from pbt_actors.model.experiment import EarlyStop, Experiment, Retention
from pbt_actors.model.protocol import Fail, Heartbeat, Report, RequestTrial, Stop, TrialAssignment, WorkerLost
from pbt_actors.model.records import CheckpointRef, Trial, TrialStatus, trial_checkpoint_prefix
from pbt_actors.model.space import Float
from pbt_actors.storage.memory import InMemoryTrialStore

pytestmark = pytest.mark.timeout(120)

POLICIES = [("initiator", False), ("initiator", True), ("truncation", False), ("random", False)]


def ref(trial_id: int, attempt: int, step: int, kind: str = "final") -> CheckpointRef:
    data = f"{kind}:{trial_id}:{attempt}:{step}".encode()
    return CheckpointRef(f"{trial_checkpoint_prefix('retention', trial_id)}a{attempt}-{kind}.ckpt", len(data),
                         hashlib.sha256(data).hexdigest(), step)


def make_experiment(policy: Any, budget: bool, population: int, window: int, keep_best: int,
                    early_stop: bool, keep_lineage: bool = False) -> Experiment:
    return Experiment(
        name="retention", space={"x": Float(0.0, 1.0)}, objective="score", population=population,
        steps_per_trial=10, max_steps=10 * 12, policy=policy, budget_mode=budget, opponent_window=window,
        seed=7, lease_s=5.0, max_attempts=2, max_losses=3, max_replacements=2, trial_timeout_s=None,
        early_stop=EarlyStop(quantile=0.5, min_peers=1) if early_stop else None,
        retention=Retention(keep_best=keep_best, keep_lineage=keep_lineage), max_trials=150,
    )


def score(spec: TrialAssignment) -> float:
    return float(spec.hparams["x"]) + spec.end_step / 100


def collect(core: ControllerCore, now: float) -> None:
    """What the controller's collector does: plan, (files deleted,) record collected, then
    check the bound on what is left."""
    plan = plan_retention(core.store, core.experiment)
    record_collected(core.store, plan.delete, now)
    held = core.store.checkpoint_ids()
    assert held == sorted(plan.keep), "everything not kept was collected"
    if not core.experiment.retention.keep_lineage:  # the bound is stated without lineages
        assert len(held) <= plan.bound, (len(held), plan.bound, plan.keep)
    for trial_id in plan.needed:
        trial = core.store.find_trial(trial_id)
        if trial is not None and trial.checkpoint is not None:
            assert core.store.checkpoint(trial_id) is not None, f"needed trial {trial_id} lost its checkpoint"


def check_assignment(core: ControllerCore, spec: TrialAssignment) -> None:
    """A lease's parent checkpoint must still be there (else the child would train from scratch)."""
    if spec.parent_id is None:
        return
    parent = core.store.get_trial(spec.parent_id)
    assert parent.collected_at is None, f"trial {spec.trial_id} leased with collected parent {parent.id}"
    assert spec.parent_checkpoint is not None
    if core.store.get_trial(spec.trial_id).resume is None:
        assert spec.parent_checkpoint == parent.checkpoint


@st.composite
def runs(draw):  # type: ignore[no-untyped-def]
    policy, budget = draw(st.sampled_from(POLICIES))
    return dict(policy=policy, budget=budget, population=draw(st.integers(2, 6)), window=draw(st.integers(1, 3)),
                keep_best=draw(st.integers(0, 3)), early_stop=draw(st.booleans()), workers=draw(st.integers(1, 4)),
                events=draw(st.lists(st.integers(0, 99), min_size=50, max_size=400)))


def drive(config: dict) -> ControllerCore:
    exp = make_experiment(config["policy"], config["budget"], config["population"], config["window"],
                          config["keep_best"], config["early_stop"], config.get("keep_lineage", False))
    core = ControllerCore(InMemoryTrialStore(), exp)
    workers = [f"w{i}" for i in range(config["workers"])]
    holding: dict[str, TrialAssignment] = {}
    now = 0.0
    for choice in config["events"]:
        now += 1.0
        worker = workers[choice % len(workers)]
        spec = holding.get(worker)
        kind = choice // len(workers) % 10 if spec is not None else -1
        if spec is None:
            reply = core.handle(RequestTrial(worker), now)
            if isinstance(reply, TrialAssignment):
                check_assignment(core, reply)
                holding[worker] = reply
        elif kind <= 4:  # complete (sometimes leasing the next in the same message)
            reply = core.handle(Report(worker, spec.trial_id, spec.attempt, {"score": score(spec)},
                                       checkpoint=ref(spec.trial_id, spec.attempt, spec.end_step),
                                       next=kind == 0), now)
            del holding[worker]
            if isinstance(reply, TrialAssignment):
                check_assignment(core, reply)
                holding[worker] = reply
        elif kind == 5:  # the trial's own failure
            core.handle(Fail(worker, spec.trial_id, spec.attempt, "boom"), now)
            del holding[worker]
        elif kind == 6:  # graceful preemption with a resume checkpoint
            core.handle(Fail(worker, spec.trial_id, spec.attempt, "preempted", preempted=True,
                             resume=ref(spec.trial_id, spec.attempt, spec.start_step + 1, "resume")), now)
            del holding[worker]
        elif kind == 7:  # the worker process died
            core.handle(WorkerLost(worker, "killed"), now)
            del holding[worker]
        elif kind == 8:  # a heartbeat with a metric: early stop may fire
            reply = core.handle(Heartbeat(worker, spec.trial_id, spec.attempt, spec.start_step + 5,
                                          {"score": score(spec) - 0.3 * (choice % 3)}), now)
            if isinstance(reply, Stop):
                del holding[worker]
        else:  # silence until the lease expires
            now += core.experiment.lease_s + 1
            core.tick(now)
            del holding[worker]
        collect(core, now)
    return core


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_retention_never_deletes_a_future_parent_and_stays_within_its_bound(config: dict) -> None:
    core = drive(config)
    core.tick(9_999.0)  # the drive's workers leave; their leases expire
    # the run may go on from here: drain it with one diligent worker and keep checking
    for step in range(2000):
        reply = core.handle(RequestTrial("drain"), 10_000.0 + step)
        if not isinstance(reply, TrialAssignment):
            break
        check_assignment(core, reply)
        core.handle(Report("drain", reply.trial_id, reply.attempt, {"score": score(reply)},
                           checkpoint=ref(reply.trial_id, reply.attempt, reply.end_step)), 10_000.0 + step)
        collect(core, 10_000.0 + step)


@pytest.mark.parametrize(("policy", "budget"), POLICIES)
def test_a_finished_run_holds_only_the_best(policy: str, budget: bool) -> None:
    core = drive(dict(policy=policy, budget=budget, population=4, window=2, keep_best=2, early_stop=False,
                      workers=3, events=[0, 1, 2] * 2 + [i * 3 for i in range(3)] * 400))
    core.tick(1e5 - 1)  # the drive's workers leave; their leases expire
    for step in range(3000):  # finish it
        reply = core.handle(RequestTrial("drain"), 1e5 + step)
        if not isinstance(reply, TrialAssignment):
            break
        core.handle(Report("drain", reply.trial_id, reply.attempt, {"score": score(reply)},
                           checkpoint=ref(reply.trial_id, reply.attempt, reply.end_step)), 1e5 + step)
        collect(core, 1e5 + step)
    assert core.finished
    plan = plan_retention(core.store, core.experiment)
    completed = core.store.trials(core.store.ids_with_status(TrialStatus.COMPLETED))
    best = sorted(completed, key=lambda t: (-(t.final or {})["score"], t.id))[:2]
    assert sorted(plan.held) == sorted(t.id for t in best)
    assert all(reason == BEST for reason in plan.keep.values())
    collected = [t for t in completed if t.collected_at is not None]
    assert len(collected) == len(completed) - 2 and all(t.checkpoint is not None for t in collected)


def test_initiator_bound_is_population_times_window_when_lineages_advance_together() -> None:
    """Generation by generation (one worker per member): held stays <= k + P * (W + 1)."""
    population, window, keep = 5, 2, 1
    exp = make_experiment("initiator", False, population, window, keep, early_stop=False)
    core = ControllerCore(InMemoryTrialStore(), exp)
    peak = 0
    for step in range(400):
        leases = []
        for w in range(population):
            reply = core.handle(RequestTrial(f"w{w}"), float(step))
            if isinstance(reply, TrialAssignment):
                leases.append((f"w{w}", reply))
        if not leases:
            break
        for worker, spec in leases:
            core.handle(Report(worker, spec.trial_id, spec.attempt, {"score": score(spec)},
                               checkpoint=ref(spec.trial_id, spec.attempt, spec.end_step)), float(step))
        collect(core, float(step))
        peak = max(peak, len(core.store.checkpoint_ids()))
    assert core.finished and core.store.count() >= 10 * population
    assert peak <= keep + population * (window + 1)
    assert peak >= population * window  # the window really is kept, not just the best


def test_pins_and_lineage_are_kept_and_disabled_retention_deletes_nothing() -> None:
    exp = make_experiment("initiator", False, 3, 1, 1, early_stop=False, keep_lineage=True)
    core = ControllerCore(InMemoryTrialStore(), exp)
    finish(core, collect_each=True)
    plan = plan_retention(core.store, core.experiment)
    best = max(core.store.trials(core.store.ids_with_status(TrialStatus.COMPLETED)),
               key=lambda t: ((t.final or {})["score"], -t.id))
    lineage = ancestors(core.store.get_trial(best.id), core)
    assert set(lineage) <= set(plan.keep) and all(plan.keep[i] == LINEAGE for i in lineage)
    assert len(plan.keep) < core.store.count(TrialStatus.COMPLETED)  # not everything is a lineage
    off = ControllerCore(InMemoryTrialStore(), replace(exp, retention=Retention(enabled=False)))
    finish(off)
    assert plan_retention(off.store, off.experiment).delete == ()
    deletable = plan_retention(off.store, exp).delete
    off.store.put_meta(META_PINS, [deletable[0]])
    replanned = plan_retention(off.store, exp)
    assert replanned.keep[deletable[0]] == PINNED and replanned.delete == deletable[1:]


def finish(core: ControllerCore, collect_each: bool = False) -> None:
    for step in range(3000):
        reply = core.handle(RequestTrial("w"), float(step))
        if not isinstance(reply, TrialAssignment):
            return
        core.handle(Report("w", reply.trial_id, reply.attempt, {"score": score(reply)},
                           checkpoint=ref(reply.trial_id, reply.attempt, reply.end_step)), float(step))
        if collect_each:
            collect(core, float(step))


def ancestors(trial: Trial, core: ControllerCore) -> list[int]:
    out = []
    while trial.parent_id is not None:
        out.append(trial.parent_id)
        trial = core.store.get_trial(trial.parent_id)
    return out


def test_record_collected_keeps_the_record_and_is_idempotent() -> None:
    core = ControllerCore(InMemoryTrialStore(), make_experiment("random", False, 2, 1, 0, False))
    finish(core)
    ids = core.store.checkpoint_ids()
    assert record_collected(core.store, ids[:2], 5.0) == ids[:2]
    assert record_collected(core.store, ids[:2], 6.0) == []
    trial = core.store.get_trial(ids[0])
    assert trial.collected_at == 5.0 and trial.checkpoint is not None
    assert Trial.from_dict(trial.to_dict()) == trial
    assert "collected_at" not in core.store.get_trial(ids[2]).to_dict()  # unchanged on disk when not set


def test_collect_store_keeps_what_it_could_not_delete_for_the_next_pass(tmp_path: Path) -> None:
    from pbt_actors.model.errors import CheckpointError
    from pbt_actors.runtime.controller.checkpoint_collector import collect_store, local_deleter

    core = ControllerCore(InMemoryTrialStore(), make_experiment("random", False, 2, 1, 1, False))
    finish(core)
    dry = collect_store(core.store, core.experiment, lambda uri: None, dry_run=True)
    assert dry.deleted == [] and len(dry.targets) == len(core.store.checkpoint_ids()) - 1
    stubborn = dry.targets[0]

    def delete(uri: str) -> None:
        if uri == stubborn[1]:
            raise PermissionError("read-only bucket")

    result = collect_store(core.store, core.experiment, delete, now=3.0)
    assert stubborn[0] not in result.deleted and len(result.errors) == 1 and "read-only" in result.errors[0]
    assert core.store.checkpoint(stubborn[0]) is not None  # still indexed: retried next time
    again = collect_store(core.store, core.experiment, lambda uri: None, now=4.0)
    assert again.deleted == [stubborn[0]]
    with pytest.raises(CheckpointError):
        local_deleter(tmp_path)("../outside.ckpt")
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "a.ckpt").write_bytes(b"x")
    local_deleter(tmp_path)("t1/a.ckpt")
    local_deleter(tmp_path)("t1/a.ckpt")  # idempotent
    assert not (tmp_path / "t1" / "a.ckpt").exists()
