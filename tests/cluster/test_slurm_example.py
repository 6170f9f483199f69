"""Issue 14, SLURM: the cluster itself, and the example batch script running the toy
experiment to completion through ``sbatch`` (controller on the first node, one worker step
per node), ``pbt-actors verify`` clean."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.runtime.host.launch import load_experiment_file
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

    # issue 21: retention works on the cluster path (pbt.sbatch gives the controller the root):
    # at most keep_best + one population's worth of checkpoint files are left
    experiment, _ = load_experiment_file(TOY)
    files = [p for p in run.checkpoints.rglob("*") if p.is_file() and p.suffix == ".ckpt"]
    assert len(files) <= experiment.retention.keep_best + experiment.population, sorted(map(str, files))
    # the allocation ends within 10 s of the run's end (no 30 s linger, no idle worker)
    finished_at = max(t.ended_at or 0.0 for t in trials)  # the last trial's end is the run's (wall clock)
    ended = datetime.datetime.fromisoformat(slurm.job_field(job, "EndTime") or "").timestamp()
    assert ended - finished_at < 10, (ended - finished_at, out)

    # the faces find the recorded checkpoint root by themselves: hosts listed, checkpoints checked
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pbt_actors.cli", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)

    verify = cli("verify", "--store", str(run.store), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["clean"] and report["checkpoints_checked"] >= 1 and report["checkpoint_root"] == str(run.checkpoints)
    status = json.loads(cli("status", "--store", str(run.store), "--json").stdout)
    assert {h["host"] for h in status["hosts"]} >= {f"{node}-j{job}" for node in NODES}, status["hosts"]
