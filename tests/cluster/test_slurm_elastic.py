"""Issue 14, SLURM: elastic capacity. A second ``sbatch`` of workers only
(``examples/slurm/workers.sbatch``) finds the running controller through the address file
the first job wrote on the shared folder, joins it, and completes trials; both jobs end
when the run is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.jobs import PREEMPTIBLE, Run, assert_finished_once, worker_hosts
from tests.cluster.slurm import SlurmCluster
from tests.support.waiting import wait_until

SHAPE = {"FAULT_POPULATION": 4, "FAULT_STEPS_PER_TRIAL": 5, "FAULT_MAX_STEPS": 40, "FAULT_STEP_SLEEP_S": 0.25,
         "FAULT_LEASE_S": 10}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_workers_only_job_joins_the_running_controller(slurm: SlurmCluster, tmp_path: Path) -> None:
    run = Run.make(tmp_path / "shared", PREEMPTIBLE, **SHAPE)
    main = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    wait_until(lambda: len(run.completed()) >= 2, 150, f"the main job's first trials; {run.output()}", poll_s=0.2)
    assert slurm.job_state(main) == "RUNNING"

    extra = run.submit(slurm, "workers.sbatch", "--nodes=2")  # the address comes from the shared folder
    joined = {f"node1-j{extra}", f"node2-j{extra}"}
    wait_until(lambda: worker_hosts(run.completed()) & joined, 150,
               f"a trial completed by job {extra}'s workers; {run.output()}", poll_s=0.2)

    assert slurm.wait_job_end(main, 200) == "COMPLETED", run.output() + slurm.logs()
    assert slurm.wait_job_end(extra, 90) == "COMPLETED", run.output() + slurm.logs()  # told `done`, it ends
    trials = assert_finished_once(run, lineages=4, max_steps=40, steps_per_trial=5)
    hosts = worker_hosts(trials)
    assert hosts & joined and hosts & {f"node1-j{main}", f"node2-j{main}"}, hosts
    assert f"pbt-workers: job {extra} nodes node[1-2] joining tcp://127.0.0.1:{run.env['PBT_PORT']}" in run.output()
