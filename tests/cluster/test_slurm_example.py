"""Issue 14, SLURM: the cluster itself, and the example batch script running the toy
experiment to completion through ``sbatch`` (controller on the first node, one worker step
per node), ``pbt-actors verify`` clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.jobs import TOY, Run, assert_finished_once, worker_hosts
from tests.cluster.slurm import NODES, SlurmCluster
from tests.support.runs import REPO


@pytest.mark.timeout(60)
def test_srun_reaches_both_nodes(slurm: SlurmCluster) -> None:
    out = slurm.run("srun", "-N2", "--ntasks-per-node=1", "bash", "-c", "echo $SLURMD_NODENAME $SLURM_NODEID",
                    timeout_s=50).stdout
    assert sorted(out.split("\n")[:2]) == ["node1 0", "node2 1"], out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sbatch_runs_the_toy_example_to_completion(slurm: SlurmCluster, tmp_path: Path) -> None:
    run = Run.make(tmp_path / "shared", TOY)
    job = run.submit(slurm, "pbt.sbatch", "--nodes=2")
    state = slurm.wait_job_end(job, 200)
    assert state == "COMPLETED", run.output() + slurm.logs()
    assert slurm.job_field(job, "ExitCode") == "0:0"

    # the toy: population 2, 150 steps in trials of 5
    trials = assert_finished_once(run, lineages=2, max_steps=150, steps_per_trial=5, traced=False)
    assert worker_hosts(trials) == {f"{node}-j{job}" for node in NODES}  # both nodes trained
    out = run.output()
    assert f"controller on node1 at tcp://127.0.0.1:{run.env['PBT_PORT']}" in out
    for node in NODES:  # one worker step per node, CPU-only (this cluster binds no GPU)
        assert f"worker-step.sh: node {node} (host id {node}-j{job}) --devices cpu --workers 1" in out

    verify = subprocess.run([sys.executable, "-m", "pbt_actors.cli", "verify", "--store", str(run.store),
                             "--checkpoint-root", str(run.checkpoints)], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
