"""Issue 14, SLURM: preemption the way SLURM does it. One node's worker step gets SIGTERM
(``scancel --signal=TERM JOB.STEP``), a grace, then SIGKILL (``scancel JOB.STEP``, which for a
step is SIGKILL at once: SLURM's SIGTERM-``KillWait``-SIGKILL sequence is for whole jobs)
while the other node trains on; in the other test the whole job is requeued (``scontrol requeue``: the same
signals to every process, then the batch script starts again and its controller reopens the
store). Either way the run completes, no trial is lost or completed twice, and the steps
trained twice are at most the work in flight when the signal came."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbt_actors.model.records import Trial
from tests.cluster.jobs import PREEMPTIBLE, Run, assert_finished_once, steps_redone, worker_hosts
from tests.cluster.slurm import SlurmCluster
from tests.faults.harness import read_trace
from tests.support.runs import REPO
from tests.support.waiting import wait_until

SHAPE: dict[str, float] = {"FAULT_POPULATION": 4, "FAULT_STEPS_PER_TRIAL": 8, "FAULT_MAX_STEPS": 24,
                           "FAULT_STEP_SLEEP_S": 0.25, "FAULT_LEASE_S": 10, "PREEMPT_SAVE_ON_STOP": 1}
GRACE_S = 15
"""Between the step's SIGTERM and its SIGKILL (a partition's ``GraceTime`` in production)."""


def _shape_checks(run: Run) -> list[Trial]:
    return assert_finished_once(run, lineages=int(SHAPE["FAULT_POPULATION"]), max_steps=int(SHAPE["FAULT_MAX_STEPS"]),
                                steps_per_trial=int(SHAPE["FAULT_STEPS_PER_TRIAL"]))


def _mid_trial_on(run: Run, host: str, min_done: int = 2) -> Trial | None:
    """A trial that ``host``'s worker is running, at least ``min_done`` steps in, 3 still to go."""
    trace = read_trace(run.shared / "trace")
    for trial in run.running():
        done = len(trace.get((trial.id, trial.attempt), []))
        if trial.lease and trial.lease.worker.startswith(f"{host}-") and min_done <= done <= trial.steps - 3:
            return trial
    return None


def _step_id(slurm: SlurmCluster, job: int, name: str) -> str | None:
    out = slurm.run("squeue", "-h", "-s", "-j", str(job), "-o", "%i %j", check=False).stdout
    return next((line.split()[0] for line in out.splitlines() if line.split()[1:] == [name]), None)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_nodes_worker_step_preempted_with_sigterm_then_sigkill(slurm: SlurmCluster, tmp_path: Path) -> None:
    run = Run.make(tmp_path / "shared", PREEMPTIBLE, **SHAPE)
    job = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    victim_host = f"node2-j{job}"
    victim = wait_until(lambda: _mid_trial_on(run, victim_host), 150,
                        f"{victim_host} mid-trial; {run.output()}", poll_s=0.1)
    step = wait_until(lambda: _step_id(slurm, job, "pbt-workers-node2"), 10, "node2's worker step")
    in_flight = sum(t.steps for t in run.running())  # every step of every leased trial, at most

    # SIGTERM to every process of the step on node2. SLURM 22.05 delivers it but exits 225 ("Invalid
    # job id specified") for a step, so the effect is what the test checks, not the exit code.
    slurm.run("scancel", "--signal=TERM", step, check=False)
    try:  # the grace: the host stops its workers, which report their trials preempted, and exits
        wait_until(lambda: _step_id(slurm, job, "pbt-workers-node2") is None, GRACE_S, "node2's step to end",
                   poll_s=0.2)
        ended_in_grace = True
    except AssertionError:
        ended_in_grace = False
        slurm.run("scancel", step)  # SIGKILL
        wait_until(lambda: _step_id(slurm, job, "pbt-workers-node2") is None, 30, "node2's step to die", poll_s=0.2)
    node2_gone_at = time.time()  # (the controller stamps trials with this host's wall clock)
    assert _step_id(slurm, job, "pbt-workers-node1") is not None  # the other node trains on

    assert slurm.wait_job_end(job, 200) == "COMPLETED", run.output() + slurm.logs()
    trials = _shape_checks(run)
    assert ended_in_grace, f"node2's workers outlived the {GRACE_S}s grace after SIGTERM; {run.output()}"
    preempted = next(t for t in trials if t.id == victim.id)
    # SIGTERM came first: the worker saved a resume checkpoint and reported the trial preempted
    assert preempted.history[0][:2] == (victim.attempt, victim.lease.worker if victim.lease else None)
    assert preempted.resume is not None and preempted.resume.step > preempted.start_step, preempted
    assert preempted.error == "preempted (SIGTERM)", preempted.error
    assert preempted.completed_attempt is not None and preempted.completed_attempt > victim.attempt
    assert preempted.worker is not None and preempted.worker.startswith(f"node1-j{job}-")
    later = [t for t in trials if t.started_at is not None and t.started_at > node2_gone_at]
    assert later and worker_hosts(later) == {f"node1-j{job}"}, worker_hosts(later)  # node2 is gone
    redone = steps_redone(run, trials)
    assert redone <= in_flight, (redone, in_flight)
    print(f"preempted one node's step: redone {redone} steps, in flight {in_flight}")

    # issue 21, item 3: `gc` collects the preempted attempt's resume checkpoint too: after it only
    # the checkpoints it holds are left (the experiment runs with retention off: --force)
    resume_file = run.checkpoints / preempted.resume.uri
    assert resume_file.is_file()
    gc = subprocess.run([sys.executable, "-m", "pbt_actors.cli", "gc", "--store", str(run.store), "--force",
                         "--checkpoint-root", str(run.checkpoints), "--json"], cwd=REPO, capture_output=True,
                        text=True, timeout=60, check=False)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    result = json.loads(gc.stdout.strip().splitlines()[-1])
    assert {"trial": preempted.id, "uri": preempted.resume.uri} in result["stale_attempt_files"], result
    assert not resume_file.exists()
    left = sorted(p.relative_to(run.checkpoints).as_posix() for p in run.checkpoints.rglob("*.ckpt"))
    assert len(left) == result["held"] - len(result["deleted"]), (left, result)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_requeued_job_resumes_from_the_same_store(slurm: SlurmCluster, tmp_path: Path) -> None:
    run = Run.make(tmp_path / "shared", PREEMPTIBLE, **SHAPE)
    job = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    wait_until(lambda: len(run.completed()) >= 3 and _mid_trial_on(run, f"node1-j{job}"), 150,
               f"3 trials done and one mid-trial; {run.output()}", poll_s=0.1)
    done_before = {t.id for t in run.completed()}
    in_flight = sum(t.steps for t in run.running())

    slurm.run("scontrol", "requeue", str(job))  # SIGTERM to every process, KillWait, SIGKILL; then again
    wait_until(lambda: slurm.job_field(job, "Restarts") == "1", 60, "the job to be requeued", poll_s=0.2)
    assert slurm.wait_job_end(job, 240) == "COMPLETED", run.output() + slurm.logs()

    out = run.output()
    assert f"job {job} (restart 0)" in out and f"job {job} (restart 1)" in out  # the script ran twice
    trials = _shape_checks(run)
    assert done_before <= {t.id for t in trials}
    redone = steps_redone(run, trials)
    assert redone <= in_flight, (redone, in_flight)
    print(f"requeued the job: redone {redone} steps, in flight {in_flight}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_time_limit_warning_to_the_batch_shell_stops_gracefully_and_a_resubmission_resumes(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    """``--signal=B:TERM@120``'s SIGTERM reaches the batch shell only (sent here at once with
    ``scancel --batch --signal=TERM``): its trap stops the worker steps first, whose trials are
    reported preempted with resume checkpoints, then the controller. Submitting again resumes."""
    run = Run.make(tmp_path / "shared", PREEMPTIBLE, **SHAPE)
    first = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    wait_until(lambda: len(run.completed()) >= 2 and _mid_trial_on(run, f"node1-j{first}")
               and _mid_trial_on(run, f"node2-j{first}"), 150, f"both nodes mid-trial; {run.output()}", poll_s=0.1)
    in_flight = sum(t.steps for t in run.running())

    slurm.run("scancel", "--batch", "--signal=TERM", str(first))
    assert slurm.wait_job_end(first, 60) == "FAILED"  # exit 143: interrupted, to be resumed
    assert slurm.job_field(first, "ExitCode") == "143:0"
    assert "pbt.sbatch: SIGTERM: stopping the workers, then the controller" in run.output()
    assert not run.running()  # every leased trial was handed back before the controller stopped
    handed_back = [t for t in run.trials() if t.error == "preempted (SIGTERM)" and t.resume is not None]
    assert handed_back, [(t.id, t.status.value, t.error) for t in run.trials()]

    second = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    assert slurm.wait_job_end(second, 200) == "COMPLETED", run.output() + slurm.logs()
    trials = _shape_checks(run)
    redone = steps_redone(run, trials)
    assert redone <= in_flight, (redone, in_flight)
    print(f"time-limit warning: {len(handed_back)} trials handed back, redone {redone} steps, in flight {in_flight}")
