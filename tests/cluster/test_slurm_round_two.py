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

from tests.cluster.jobs import PREEMPTIBLE, Run, assert_finished_once, worker_hosts
from tests.cluster.slurm import SlurmCluster
from tests.support.waiting import wait_until

SHAPE = {"FAULT_POPULATION": 4, "FAULT_STEPS_PER_TRIAL": 4, "FAULT_MAX_STEPS": 24, "FAULT_STEP_SLEEP_S": 0.2,
         "FAULT_LEASE_S": 8}


def _array_tasks(slurm: SlurmCluster, array_id: int, count: int) -> dict[str, int] | None:
    """Task index -> job id of every task of the array once all ``count`` are listed."""
    out = slurm.run("squeue", "-h", "-r", "-j", str(array_id), "-o", "%K %A", check=False).stdout
    tasks = {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}
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

    array = run.submit(slurm, "workers.sbatch", "--array=0-2", "--nodes=1")
    tasks = wait_until(lambda: _array_tasks(slurm, array, 3), 30, "3 array tasks")
    assert array in tasks.values()  # one task carries the master id: the case that broke
    task_hosts = {f"{node}-j{job}" for job in tasks.values() for node in ("node1", "node2")}
    wait_until(lambda: len(worker_hosts(run.completed()) & task_hosts) >= 2, 120,
               f"trials completed by the array's workers; {run.output()}", poll_s=0.2)

    # node2 is lost with every worker on it: nothing of the run lives there
    on_node2 = {job for job in tasks.values() if slurm.job_field(job, "NodeList") == "node2"}
    if on_node2:
        assert _kill_worker_processes_on(slurm, "node2", on_node2) > 0
        lost_at = time.monotonic()
        wait_until(lambda: not any(t.lease and t.lease.worker.startswith("node2-") for t in run.running()), 60,
                   "node2's trials handed to node1 (lease expiry)", poll_s=0.3)
        assert time.monotonic() - lost_at < 40

    assert slurm.wait_job_end(main, 180) == "COMPLETED", run.output() + slurm.logs()
    for job in tasks.values():
        state = slurm.wait_job_end(job, 60)
        if job in on_node2:
            continue  # its processes were SIGKILLed: SLURM's verdict on a lost node is its own
        assert state == "COMPLETED", (job, state, run.output())
    assert "common.sh: No such file" not in run.output()
    trials = assert_finished_once(run, lineages=4, max_steps=24, steps_per_trial=4)
    assert worker_hosts(trials) & task_hosts

    # late jobs on the finished run: in seconds, exit 0
    started = time.monotonic()
    late_workers = run.submit(slurm, "workers.sbatch", "--nodes=1")
    late_main = run.submit(slurm, "pbt.sbatch", "--nodes=1")
    for job in (late_workers, late_main):
        assert slurm.wait_job_end(job, 60) == "COMPLETED", run.output()
        assert slurm.job_field(job, "ExitCode") == "0:0"
    assert time.monotonic() - started < 30
    out = run.output()
    assert f"pbt-workers: job {late_workers}: the run is finished" in out
    assert "pbt.sbatch: the run in" in out and "is finished; nothing to do" in out
