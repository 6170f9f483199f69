"""``examples/slurm/worker-step.sh`` without a cluster: the arguments it gives ``pbt-actors
worker`` for the environment SLURM sets on a node (GPU binding, node name, job id). The
real cluster tests bind no GPU, so the GPU path is checked here (``PBT_CMD=echo``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.jobs import SLURM_DIR

BASE = {"PBT_EXPERIMENT": "exp.py", "PBT_CONNECT": "tcp://10.0.0.1:5555", "PBT_CHECKPOINTS": "/shared/ckpt",
        "PBT_CMD": "echo", "SLURMD_NODENAME": "gpu07", "SLURM_JOB_ID": "4242"}


def _step(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBT_", "CUDA_VISIBLE"))}
    return subprocess.run(["bash", str(SLURM_DIR / "worker-step.sh")], env={**clean, **BASE, **env},
                           capture_output=True, text=True, timeout=20, check=False)


def _argv(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.timeout(30)
def test_gpus_as_slurm_bound_them() -> None:
    argv = _argv(_step(CUDA_VISIBLE_DEVICES="2,3"))
    assert argv == ("worker exp.py --connect tcp://10.0.0.1:5555 --checkpoint-root /shared/ckpt "
                    "--host-id gpu07-j4242 --devices 2,3")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("visible", [None, "", "NoDevFiles"])
def test_cpu_only_when_slurm_bound_no_gpu(visible: str | None) -> None:
    env = {"SLURM_CPUS_PER_TASK": "3"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    assert _argv(_step(**env)).endswith("--host-id gpu07-j4242 --devices cpu --workers 3")


@pytest.mark.timeout(30)
def test_curve_keys_and_extra_arguments() -> None:
    argv = _argv(_step(PBT_KEYS="/keys", PBT_WORKER_ARGS="--no-zygote", PBT_CPU_WORKERS="2"))
    assert argv.endswith("--devices cpu --workers 2 --curve-server-key /keys/controller.key "
                         "--curve-secret /keys/worker.key_secret --no-zygote")


@pytest.mark.timeout(30)
def test_gpu_uuids_and_missing_settings_are_refused_clearly() -> None:
    uuids = _step(CUDA_VISIBLE_DEVICES="GPU-8f2c1d3e-aaaa")
    assert uuids.returncode == 2 and "not a list of GPU indices" in uuids.stderr
    missing = _step(PBT_CONNECT="")
    assert missing.returncode != 0 and "set PBT_CONNECT" in missing.stderr


@pytest.mark.timeout(30)
def test_the_cluster_tests_say_why_they_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cluster import slurm

    monkeypatch.setattr(slurm.os, "geteuid", lambda: 1000)
    assert "need root" in (slurm.missing_reason() or "")
    monkeypatch.setattr(slurm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None if name in ("munged", "slurmd") else "/usr/bin/x")
    reason = slurm.missing_reason() or ""
    assert "missing munged, slurmd" in reason and ".ci/install" in reason


@pytest.mark.timeout(30)
def test_a_worker_step_on_a_finished_run_ends_at_once_with_exit_0(tmp_path: Path) -> None:
    """Issue 21, 4b: the mark pbt.sbatch leaves once the run is finished ends a late step."""
    mark = tmp_path / "run.finished"
    mark.touch()
    done = _step(PBT_FINISHED_MARK=str(mark))
    assert done.returncode == 0 and "the run is finished" in done.stdout, done.stdout + done.stderr
    assert "--connect" not in done.stdout  # no worker was started


@pytest.mark.timeout(60)
def test_a_worker_waiting_for_a_gone_controller_is_stopped_by_the_mark(tmp_path: Path) -> None:
    """A worker that started after the controller ended waits for nobody (up to
    --controller-timeout): once the mark appears the step stops it and exits 0, in seconds."""
    fake = tmp_path / "fake-pbt-actors"  # a worker that never hears a controller; says when signalled
    fake.write_text("#!/usr/bin/env bash\ntrap 'echo got-TERM; exit 143' TERM\nwhile :; do sleep 0.1; done\n")
    fake.chmod(0o755)
    mark = tmp_path / "run.finished"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBT_", "CUDA_VISIBLE"))}
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "worker-step.sh")], stdout=subprocess.PIPE, text=True,
                            env={**clean, **BASE, "PBT_CMD": str(fake), "PBT_FINISHED_MARK": str(mark)},
                            start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(3)  # still waiting: no mark yet
        mark.touch()
        started = time.monotonic()
        assert proc.wait(20) == 0
        took = time.monotonic() - started
        out = proc.stdout.read() if proc.stdout else ""
        assert "stopping the workers still waiting" in out and "got-TERM" in out, out
        assert took < 12, took  # poll (2 s) + grace (5 s) + the worker's exit
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
