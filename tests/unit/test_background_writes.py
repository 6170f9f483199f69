"""Trial switches without waiting: pending completions in the core, background writes and
in-memory parents in the worker (docs/design.md §15)."""

from __future__ import annotations

import threading

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import SchemaError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import Ack, Report, TrialAssignment, Wait, WorkerLost
from pbt_actors.model.records import TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.runtime.worker.background_writes import BackgroundWriter, StateCache, WriteJob
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import execute
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.driver import Driver, fake_checkpoint

pytestmark = pytest.mark.timeout(60)


def driver(population: int = 2) -> Driver:
    exp = Experiment(name="exp", space={"lr": Float(1e-3, 1.0, log=True)}, objective="score",
                     population=population, steps_per_trial=5, max_steps=15, seed=1, lease_s=10.0)
    return Driver(ControllerCore(InMemoryTrialStore(), exp))


def pending(worker: str, spec: TrialAssignment, value: float, *, next: bool = True) -> Report:
    return Report(worker, spec.trial_id, spec.attempt, {"score": value}, next=next, pending=True)


def durable(worker: str, spec: TrialAssignment, value: float, *, next: bool = False) -> Report:
    return Report(worker, spec.trial_id, spec.attempt, {"score": value},
                  checkpoint=fake_checkpoint(spec.trial_id, spec.attempt, spec.end_step), next=next)


# --- the controller: completed, and a parent, only once durable ----------------------------------------
def test_a_pending_report_keeps_the_trial_running_and_leases_the_next_one() -> None:
    d = driver()
    first = d.lease("w0")
    reply = d.core.handle(pending("w0", first, 0.5), d.now)
    assert isinstance(reply, TrialAssignment) and reply.trial_id != first.trial_id
    held = d.trial(first.trial_id)
    assert held.status is TrialStatus.RUNNING and held.lease.worker == "w0" and held.final == {"score": 0.5}
    assert d.store.count(TrialStatus.COMPLETED) == 0 and d.store.count() == 2  # no child of a pending trial
    # asking again (a `wait` answered earlier, say) keeps the pending completion leased
    d.request("w0")
    assert d.trial(first.trial_id).status is TrialStatus.RUNNING


def test_the_completing_report_completes_it_and_only_then_spawns_children() -> None:
    d = driver(population=1)
    first = d.lease("w0")
    assert isinstance(d.core.handle(pending("w0", first, 0.5), d.now), Wait)  # nothing else to train
    assert d.store.count() == 1
    reply = d.core.handle(durable("w0", first, 0.5, next=True), d.now)
    assert isinstance(reply, TrialAssignment) and reply.parent_id == first.trial_id
    assert reply.parent_checkpoint == fake_checkpoint(first.trial_id, first.attempt, first.end_step)
    done = d.trial(first.trial_id)
    assert done.status is TrialStatus.COMPLETED and done.checkpoint == reply.parent_checkpoint
    assert isinstance(d.core.handle(durable("w0", first, 0.5), d.now), Ack)  # a resend: nothing twice
    assert d.store.count() == 2


def test_heartbeats_of_the_next_trial_renew_the_pending_lease_and_a_lost_worker_releases_it() -> None:
    d = driver()
    first = d.lease("w0")
    second = d.core.handle(pending("w0", first, 0.5), d.now)
    assert isinstance(second, TrialAssignment)
    d.now = 8.0
    d.heartbeat("w0", second, 1)
    assert d.trial(first.trial_id).lease.deadline == pytest.approx(18.0)
    assert d.core.tick(12.0) == []
    d.core.handle(WorkerLost("w0", "killed"), 13.0)
    lost = d.trial(first.trial_id)
    assert lost.status is TrialStatus.PENDING and lost.attempt == 2 and lost.final is None
    assert d.store.count(TrialStatus.COMPLETED) == 0


def test_a_death_during_the_next_trial_is_the_next_trials_not_the_pending_completions() -> None:
    """A poison trial that kills its worker must not take the trial this worker had finished
    along as a suspect: that one is re-queued as a loss, never charged a death (it would
    otherwise fail after three deaths it did not cause)."""
    d = driver()
    first = d.lease("w0")
    second = d.core.handle(pending("w0", first, 0.5), d.now)
    assert isinstance(second, TrialAssignment)
    for death in (1, 2, 3):
        d.core.handle(WorkerLost("w0", "process exited with code -9"), d.now)
        collateral, culprit = d.trial(first.trial_id), d.trial(second.trial_id)
        assert collateral.deaths == 0 and collateral.losses == death and collateral.status is TrialStatus.PENDING
        assert "while its checkpoint was being written" in (collateral.error or "")
        assert culprit.deaths == death
        if death < 3:  # both come back to w0: the finished one first, then the suspect again
            again = d.lease("w0")
            assert again.trial_id == first.trial_id
            assert d.core.handle(pending("w0", again, 0.5), d.now).trial_id == second.trial_id
    assert d.trial(first.trial_id).status is TrialStatus.PENDING  # still to complete, never failed


def test_a_pending_completion_whose_lease_expired_is_still_completed_by_its_late_report() -> None:
    d = driver()
    first = d.lease("w0")
    d.core.handle(pending("w0", first, 0.5, next=False), d.now)
    assert d.core.tick(11.0) == [first.trial_id]
    assert d.trial(first.trial_id).final is None
    d.now = 12.0
    assert isinstance(d.core.handle(durable("w0", first, 0.5), d.now), Ack)
    assert d.trial(first.trial_id).status is TrialStatus.COMPLETED


def test_a_pending_report_carries_no_checkpoint_and_is_left_out_of_the_wire_when_false() -> None:
    spec = TrialAssignment(trial_id=1, attempt=1, generation=0, hparams={}, start_step=0, end_step=5, parent_id=None,
                           parent_checkpoint=None, heartbeat_s=1.0, experiment="exp")
    with pytest.raises(SchemaError, match="pending"):
        Report.from_body({**durable("w0", spec, 1.0).to_body(), "pending": True})
    assert "pending" not in durable("w0", spec, 1.0).to_wire()
    assert pending("w0", spec, 1.0).to_wire()["pending"] is True


# --- the worker's side ---------------------------------------------------------------------------------------
def context(tmp_path, trial_id: int, parent=None, **extra) -> TrialContext:
    return TrialContext(trial_id=trial_id, attempt=1, generation=trial_id - 1, hparams={"lr": 0.1},
                        start_step=(trial_id - 1) * 3, end_step=trial_id * 3, checkpoint_root=str(tmp_path),
                        parent_checkpoint=parent, experiment="exp", **extra)


def deterministic_train(ctx: TrialContext) -> dict[str, float]:
    """Plain data, changed in place (as a user's dict of lists may well be)."""
    state = ctx.load_checkpoint() or {"theta": [0.9, -0.4], "seen": []}
    for step in range(ctx.start_step, ctx.end_step):
        state["theta"] = [t - 0.1 * float(ctx.hparams["lr"]) * t for t in state["theta"]]
        state["seen"].append(step)
        ctx.report(step + 1, Q=1.2 - sum(t * t for t in state["theta"]))
    ctx.save_checkpoint(state)
    return {"Q": 1.2 - sum(t * t for t in state["theta"])}


def run_chain(tmp_path, *, in_memory: bool) -> list[tuple[dict, object]]:
    """Three trials of one lineage on one worker; returns each report's final metrics and ref."""
    writer, memory = BackgroundWriter(), StateCache(keep=1 if in_memory else 0)
    out, parent = [], None
    try:
        for trial_id in (1, 2, 3):
            ctx = context(tmp_path, trial_id, parent, writer=writer, memory=memory)
            report = execute(ctx, deterministic_train, "w0")
            assert isinstance(report, Report)
            if report.pending:
                assert report.checkpoint is None and ctx.pending is not None
                parent = ctx.pending.result(timeout=30)
            else:
                parent = report.checkpoint
            assert ctx.from_memory is (in_memory and trial_id > 1)
            out.append((dict(report.final), parent))
    finally:
        writer.close(timeout=5)
    return out


def test_continuing_in_memory_gives_the_same_metrics_and_bytes_as_loading_from_disk(tmp_path) -> None:
    memory = run_chain(tmp_path / "memory", in_memory=True)
    disk = run_chain(tmp_path / "disk", in_memory=False)
    assert [m for m, _ in memory] == [m for m, _ in disk]
    assert [ref.sha256 for _, ref in memory] == [ref.sha256 for _, ref in disk]  # what was written, too
    assert load_checkpoint(tmp_path / "memory", memory[-1][1])["seen"] == list(range(9))


def test_a_state_is_handed_out_once_and_only_under_its_durable_reference(tmp_path) -> None:
    cache, writer = StateCache(keep=1), BackgroundWriter()
    try:
        ctx = context(tmp_path, 1, writer=writer, memory=cache)
        state = {"theta": [1.0]}
        assert ctx.save_checkpoint(state) is None
        ref = ctx.pending.result(timeout=30)
        assert cache.take(fake_checkpoint(1, 1, 3)) == (False, None)  # another ref: not this state
        assert cache.take(ref) == (True, state) and cache.take(ref) == (False, None)
    finally:
        writer.close(timeout=5)


def test_a_save_without_a_writer_or_mid_trial_is_written_at_once(tmp_path) -> None:
    writer = BackgroundWriter()
    try:
        ctx = context(tmp_path, 1, writer=writer)
        ref = ctx.save_checkpoint({"x": 1}, step=2)  # a resume point before end_step
        assert ref is not None and ctx.pending is None
        assert context(tmp_path, 2).save_checkpoint({"x": 2}) is not None
        assert ctx.save_checkpoint({"x": 3}, background=False) is not None
    finally:
        writer.close(timeout=5)


def test_the_writer_bounds_what_is_queued_and_reports_errors_to_the_callbacks() -> None:
    gate, started = threading.Event(), threading.Event()

    def slow():
        started.set()
        gate.wait(10)
        return fake_checkpoint(1, 1, 3)

    def broken():
        raise OSError("disk on fire")

    writer = BackgroundWriter(max_pending=1)
    try:
        first = writer.submit(WriteJob(1, 1, 3, slow))
        assert started.wait(10)
        second = writer.submit(WriteJob(2, 1, 3, broken))  # queued: the one slot
        blocked = threading.Thread(target=writer.submit, args=(WriteJob(3, 1, 3, slow),), daemon=True)
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive()  # a third waits for room: bounded memory
        seen: list[object] = []
        second.add_done_callback(lambda job: seen.append(job.error))
        gate.set()
        assert first.result(10) == fake_checkpoint(1, 1, 3)
        with pytest.raises(OSError, match="on fire"):
            second.result(10)
        assert writer.drain(10) and len(seen) == 1 and isinstance(seen[0], OSError)
    finally:
        gate.set()
        writer.close(timeout=5)


def test_a_preempted_trial_reports_its_background_write_durable(tmp_path) -> None:
    writer = BackgroundWriter()
    try:
        ctx = context(tmp_path, 1, writer=writer)

        def train(c: TrialContext) -> dict[str, float]:
            c.report(3, Q=1.0)
            c.save_checkpoint({"x": 1})
            c.preempt_event.set()  # SIGTERM right after the save
            return {"Q": 1.0}

        report = execute(ctx, train, "w0")
        assert isinstance(report, Report) and not report.pending and report.checkpoint is not None
        assert load_checkpoint(tmp_path, report.checkpoint) == {"x": 1}
    finally:
        writer.close(timeout=5)


def test_retention_never_collects_a_checkpoint_being_written_or_the_parent_a_child_took_from_memory() -> None:
    from dataclasses import replace as dc_replace

    from pbt_actors.control.retention_rules import PARENT, plan_retention
    from pbt_actors.model.experiment import Retention

    d = driver(population=1)
    d.core.experiment = dc_replace(d.core.experiment, retention=Retention(keep_best=0))
    first = d.lease("w0")
    d.core.handle(pending("w0", first, 0.5, next=False), d.now)
    plan = plan_retention(d.store, d.core.experiment)
    assert first.trial_id not in plan.held and first.trial_id not in plan.delete  # being written: not held
    child = d.core.handle(durable("w0", first, 0.5, next=True), d.now)  # the worker takes it from memory
    assert isinstance(child, TrialAssignment) and child.parent_id == first.trial_id
    d.core.handle(pending("w0", child, 0.6, next=False), d.now)  # the child's own write in flight
    plan = plan_retention(d.store, d.core.experiment)
    assert plan.keep.get(first.trial_id) == PARENT and first.trial_id not in plan.delete
    assert child.trial_id not in plan.held


def test_a_directory_checkpoint_is_committed_in_the_background_and_its_folder_kept_for_the_lineage(tmp_path) -> None:
    """The copy is made before ``save_checkpoint_dir`` returns (the caller's folder may go at
    once, as a command trial's temporary one does), the commit in the background; the lineage's
    next trial on this worker gets the committed folder without a fetch or a re-hash, and a
    child elsewhere (no memory) loads the very same verified files."""
    from pbt_actors.runtime.checkpoint_payloads import load_checkpoint_dir, verify_file

    root = tmp_path / "root"
    writer, memory = BackgroundWriter(), StateCache(keep=1)
    try:
        source = tmp_path / "out"
        (source / "sub").mkdir(parents=True)
        (source / "weights.bin").write_bytes(b"w" * 5000)
        (source / "sub" / "opt.json").write_text('{"step": 3}')
        ctx = context(root, 1, writer=writer, memory=memory)
        assert ctx.save_checkpoint_dir(source, background=True) is None and ctx.pending is not None
        for path in (source / "sub" / "opt.json", source / "weights.bin"):
            path.unlink()  # the caller's folder is theirs again
        (source / "sub").rmdir()
        ref = ctx.pending.result(timeout=30)
        assert ref.uri.endswith(".manifest") and verify_file(str(root), ref) is None
        child = context(root, 2, ref, writer=writer, memory=memory)
        kept = child.load_checkpoint_dir()
        assert child.from_memory and kept == load_checkpoint_dir(str(root), ref)
        assert (kept / "weights.bin").read_bytes() == b"w" * 5000
        elsewhere = context(root, 3, ref, writer=writer, memory=memory)  # handed out once: now from the store
        assert elsewhere.load_checkpoint_dir() == kept and not elsewhere.from_memory
        resume = context(root, 4, writer=writer, memory=memory)
        (source / "x").write_text("resume")
        assert resume.save_checkpoint_dir(source, step=10) is not None  # a resume point: durable at once
    finally:
        writer.close(timeout=5)
