"""Issue 4, item 1: graceful preemption. SIGTERM to a worker process sets ``ctx.should_stop``;
the trial saves a resume checkpoint (or has a periodic one) and is reported preempted; the
controller re-queues the rest of the trial from that checkpoint; the supervisor restarts the
worker; the work lost is at most the steps since the last checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.verify import verify_store
from tests.faults.harness import EXPERIMENTS, env_with, read_trace, running, start, worker_pids
from tests.support.waiting import wait_until

PREEMPTIBLE = EXPERIMENTS / "preemptible.py"


def _mid_trial(store: Path, trace: Path, min_done: int) -> tuple[Trial, int] | None:
    """A RUNNING first attempt with at least ``min_done`` steps done and 4 still to go."""
    done = read_trace(trace)
    for trial in running(store):
        steps = len(done.get((trial.id, trial.attempt), []))
        if trial.attempt == 1 and trial.lease is not None and min_done <= steps <= trial.steps - 4:
            return trial, steps
    return None


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("save_on_stop", "ckpt_every"), [(True, 0), (False, 3)],
                         ids=["resume-checkpoint-at-sigterm", "periodic-checkpoints-only"])
def test_sigterm_preempts_a_trial_which_resumes_from_its_checkpoint(tmp_path: Path, save_on_stop: bool,
                                                                    ckpt_every: int) -> None:
    store, trace = tmp_path / "run", tmp_path / "trace"
    ckpt = store / "checkpoints"
    env = env_with(FAULT_STEP_SLEEP_S=0.15, FAULT_STEPS_PER_TRIAL=10, FAULT_MAX_STEPS=40, FAULT_POPULATION=2,
                   FAULT_TRACE_DIR=trace, PREEMPT_SAVE_ON_STOP=int(save_on_stop), PREEMPT_CKPT_EVERY=ckpt_every)
    run = start("run", str(PREEMPTIBLE), "--workers", "2", "--devices", "cpu", "--store", str(store), "--json",
                env=env)
    victim, _ = wait_until(lambda: _mid_trial(store, trace, min_done=4), 90, "a trial 4 steps into its first attempt")
    assert victim.lease is not None
    worker = victim.lease.worker  # this process's own id: <slot>-<6 hex>; worker_pids are by slot
    slot = worker.rsplit("-", 1)[0]
    old_pid = wait_until(lambda: worker_pids(ckpt).get(slot), 10, f"the pid of {worker}")
    os.kill(old_pid, signal.SIGTERM)

    # the supervisor starts a fresh process for the same slot (exit code 3 = preempted)
    new_pid = wait_until(lambda: (p := worker_pids(ckpt).get(slot)) not in (None, old_pid) and p, 60,
                         f"a restarted {slot}", poll_s=0.02)
    assert new_pid != old_pid
    assert run.wait(180) == 0, run.output()
    assert f"worker {slot} exited (code 3)" in run.output()

    with LmdbTrialStore(store, readonly=True) as s:
        report = verify_store(s, ckpt, finished=True)
        assert report.ok, report.problems
        everything = list(s.iter_trials())
        assert all(t.status is TrialStatus.COMPLETED for t in everything)
        trial = s.get_trial(victim.id)
    assert trial.attempt == 2 and trial.completed_attempt == 2, trial
    assert trial.error == "preempted (SIGTERM)"
    assert trial.history[0][:2] == (1, worker)  # the preempted attempt is on record

    steps = read_trace(trace)
    first, second = steps[(trial.id, 1)], steps[(trial.id, 2)]
    reached = trial.start_step + len(first)
    assert first == list(range(trial.start_step, reached))  # attempt 1 stopped between steps
    assert reached < trial.end_step
    # the retry resumed from the last checkpoint at or before the step reached
    checkpoints = [s for s in range(trial.start_step + 1, reached + 1) if ckpt_every and s % ckpt_every == 0]
    expected_resume = reached if save_on_stop else max([trial.start_step, *checkpoints])
    resumed_at = trial.resume.step if trial.resume is not None else trial.start_step
    assert resumed_at == expected_resume
    assert second == list(range(resumed_at, trial.end_step))
    lost = reached - resumed_at
    assert lost == 0 if save_on_stop else lost <= ckpt_every  # at most the steps since the last checkpoint
    # and the model state saw every step exactly once, in every completed trial
    for t in everything:
        assert t.checkpoint is not None
        assert load_checkpoint(ckpt, t.checkpoint)["steps"] == t.end_step, t.id
