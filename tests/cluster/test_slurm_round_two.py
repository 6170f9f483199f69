"""Issue 21, SLURM round two: what a cluster user hit following docs/clusters.md word by word.

* Job arrays (item 1): ``sbatch --array=0-2 workers.sbatch``: every task (the one carrying the
  array's master id too, for which ``scontrol show job`` lists every task) finds its scripts,
  joins the running controller and ends ``COMPLETED``.
* After the end (item 4b): a ``workers.sbatch`` job or a ``pbt.sbatch`` resubmission that starts
  on a finished run ends in seconds, ``COMPLETED`` with exit 0 (the finished-run mark).
* Node loss (item 5): with the controller's job on one node and the workers as their own jobs
  (the recipe docs/clusters.md recommends), SIGKILLing every worker of node2 leaves the run to
  finish on node1: nothing lost or completed twice.

The retention, allocation-end and face checks of the whole-job recipe (items 2, 4a, 6) ride on
the toy run of ``test_slurm_example.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from tests.cluster.jobs import PREEMPTIBLE, Run, assert_finished_once, steps_redone, worker_hosts
from tests.cluster.slurm import SlurmCluster
from tests.support.waiting import wait_until

SHAPE = {"FAULT_POPULATION": 4, "FAULT_STEPS_PER_TRIAL": 4, "FAULT_MAX_STEPS": 40, "FAULT_STEP_SLEEP_S": 0.3,
         "FAULT_LEASE_S": 8, "PBT_CPU_WORKERS": 1}


def _array_tasks(slurm: SlurmCluster, array_id: int, count: int) -> dict[str, int] | None:
    """Task index -> job id of every task of the array once all ``count`` are listed."""
    out = slurm.run("scontrol", "-o", "show", "job", str(array_id), check=False).stdout  # a line per task
    tasks = {}
    for line in out.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("ArrayTaskId", "").isdigit():
            tasks[fields["ArrayTaskId"]] = int(fields["JobId"])
    return tasks if len(tasks) == count else None


def _kill_worker_processes_on(slurm: SlurmCluster, node: str, jobs: set[int]) -> int:
    """SIGKILL every process of ``jobs`` on ``node`` (a node lost with its workers); how many."""
    killed = 0
    needle = f"SLURM_CONF={slurm.conf}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            env = (entry / "environ").read_bytes().split(b"\0")
            if needle not in env or f"SLURMD_NODENAME={node}".encode() not in env:
                continue
            if not any(f"SLURM_JOB_ID={j}".encode() in env for j in jobs):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_array_of_worker_jobs_joins_survives_a_lost_node_and_late_jobs_end_at_once(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    run = Run.make(tmp_path / "shared", PREEMPTIBLE, **SHAPE)
    main = run.submit(slurm, "pbt.sbatch", "--nodes=1", "--nodelist=node1")
    wait_until(lambda: len(run.completed()) >= 1, 120, f"the main job's first trial; {run.output()}", poll_s=0.2)

    # 2 CPUs a task: one task fits beside the main job on node1 (4 CPUs), two go to node2
    array = run.submit(slurm, "workers.sbatch", "--array=0-2", "--nodes=1", "--cpus-per-task=2")
    tasks = wait_until(lambda: _array_tasks(slurm, array, 3), 30, "3 array tasks")
    assert array in tasks.values()  # one task carries the master id: the case that broke
    task_hosts = {f"{node}-j{job}" for job in tasks.values() for node in ("node1", "node2")}
    wait_until(lambda: all(slurm.job_state(job) == "RUNNING" for job in tasks.values()), 60,
               f"every array task running; {slurm.run('squeue', check=False).stdout}", poll_s=0.3)
    on_node2 = {job for job in tasks.values() if slurm.job_field(job, "NodeList") == "node2"}
    assert len(on_node2) == 2, {job: slurm.job_field(job, "NodeList") for job in tasks.values()}
    node2_hosts = {f"node2-j{job}" for job in on_node2}
    wait_until(lambda: worker_hosts(run.completed()) & node2_hosts, 120,
               f"a trial completed by node2's array workers; {run.output()}", poll_s=0.2)
    out = run.output()
    for job in tasks.values():  # every task found its scripts (the master id's too) and joined
        assert f"pbt-workers: job {job} nodes node" in out, out

    # node2 is lost with every worker on it (SIGKILL, no goodbye): the run finishes on node1
    in_flight = sum(t.steps for t in run.running())  # every step of every leased trial, at most
    assert _kill_worker_processes_on(slurm, "node2", on_node2) > 0

    assert slurm.wait_job_end(main, 180) == "COMPLETED", run.output() + slurm.logs()
    for job in tasks.values():
        state = slurm.wait_job_end(job, 60)
        if job not in on_node2:  # (the killed ones: SLURM's verdict on a lost node is its own)
            assert state == "COMPLETED", (job, state, run.output())
    assert "common.sh: No such file" not in run.output()
    # (untraced: a SIGKILLed attempt may have trained to the end step and died before its report)
    trials = assert_finished_once(run, lineages=4, max_steps=40, steps_per_trial=4, traced=False)
    for trial in trials:  # each checkpoint's state was trained for exactly its end step
        assert trial.checkpoint is not None
        assert load_checkpoint(run.checkpoints, trial.checkpoint)["steps"] == trial.end_step, trial.id
    redone = steps_redone(run, trials)
    assert redone <= in_flight, (redone, in_flight)  # at most the work in flight on the lost node
    assert worker_hosts(trials) & task_hosts

    # late jobs on the finished run: in seconds, exit 0
    started = time.monotonic()
    late_workers = run.submit(slurm, "workers.sbatch", "--nodes=1")
    late_main = run.submit(slurm, "pbt.sbatch", "--nodes=1")
    for job in (late_workers, late_main):
        assert slurm.wait_job_end(job, 60) == "COMPLETED", run.output()
    assert time.monotonic() - started < 30
    for job in (main, late_workers, late_main):  # the durable record (jobcomp/filetxt) says the same
        record = wait_until(lambda job=job: slurm.completion(job), 10, f"job {job}'s completion record")
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record
    out = run.output()
    assert f"pbt-workers: job {late_workers}: the run is finished" in out
    assert "pbt.sbatch: the run in" in out and "is finished; nothing to do" in out
