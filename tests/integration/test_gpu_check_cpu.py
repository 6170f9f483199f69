"""benchmarks/gpu_check.py on a machine without a GPU: it says so, skips the GPU parts and
runs the CPU-feasible ones for real (a CPU run of the gpu_cnn example through the CLI, the
checkpoint round trip, the zygote's fallback with CUDA-at-import simulated), exit code 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_gpu_check_runs_its_cpu_parts_and_skips_the_gpu_ones_clearly(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--json",
                             "--workdir", str(tmp_path / "work"), "--budget-s", "360"],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, output
    assert "no GPU: skipping GPU parts" in output, output
    results = json.loads(out.read_text())
    assert results == json.loads(output.strip().splitlines()[-1])  # --json prints what --out holds
    assert results["env"]["gpus"] == [] and results["ok"] is True

    run = results["runs"]["cpu_2_workers"]
    assert run["finished"] and not run["hung"] and run["returncode"] == 0, run
    assert run["trials"] == 4 and run["workers"] == 2  # population 2 × 2 steps of 1
    assert run["trials_per_s"] > 0 and run["steps_per_s"] == pytest.approx(run["trials_per_s"])
    assert run["worker_gap_ms"]["n"] == 2 and run["worker_gap_ms"]["max"] >= 0
    assert run["trials_on_cuda"] == "0/4" and not run["fell_back"]  # CPU workers, forked from the zygote
    assert run["attempt_minus_train_ms"]["n"] == 4 and run["attempt_minus_train_ms"]["p50"] > 0

    checkpoint = results["checkpoint"]
    assert checkpoint["ok"] and checkpoint["loads"]["cpu"]["equal_restored"]
    assert checkpoint["load_path_devices"] == ["cpu"]

    case = results["zygote"]["simulated_cuda_init_at_import"]
    assert case["ok"] and case["finished"] and case["fell_back"] and not case["hung"], case
    assert case["warnings"] == 1 and "initialised CUDA" in case["warning"] and "--no-zygote" in case["warning"]
