"""benchmarks/gpu_check.py's arithmetic on the GPU path, which a CPU machine never reaches in
a run: attempts of two workers sharing GPU 0 and utilisation samples, made up here with known
answers (per-worker gaps, the GPU's uncovered time, utilisation inside and between trials)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
assert spec is not None and spec.loader is not None
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check
spec.loader.exec_module(gpu_check)
Attempt, Sample, UtilSampler = gpu_check.Attempt, gpu_check.Sample, gpu_check.UtilSampler


def sampler_with(samples: list[tuple[float, float]]) -> object:
    sampler = UtilSampler()
    sampler.samples = [Sample(at, 0, util, 1000.0) for at, util in samples]
    return sampler


@pytest.mark.timeout(10)
def test_two_workers_on_one_gpu_gaps_uncovered_time_and_utilisation() -> None:
    attempts = [
        Attempt(1, 1, "h-w0-gpu0-aaaaaa", 100.0, 101.0, 2, True),
        Attempt(2, 1, "h-w1-gpu0-bbbbbb", 100.5, 101.5, 2, True),
        Attempt(3, 1, "h-w0-gpu0-aaaaaa", 101.2, 102.0, 2, True),  # w0's gap: 0.2 s
        Attempt(4, 1, "h-w1-gpu0-bbbbbb", 103.0, 104.0, 2, True),  # w1's gap: 1.5 s; GPU uncovered 102-103
    ]
    samples = [(100.2, 80.0), (101.8, 60.0), (102.2, 0.0), (102.5, 0.0), (102.8, 0.0), (103.5, 90.0), (110.0, 5.0)]
    figures = gpu_check.training_figures(attempts, sampler_with(samples))
    assert figures["window_s"] == pytest.approx(4.0) and figures["trials"] == 4 and figures["workers"] == 2
    assert figures["trials_per_s"] == pytest.approx(1.0) and figures["steps_per_s"] == pytest.approx(2.0)
    assert figures["worker_gap_ms"]["n"] == 2 and figures["worker_gap_ms"]["max"] == pytest.approx(1500.0)
    gpu = figures["gpus"]["0"]
    assert gpu["workers"] == 2
    assert gpu["uncovered_share"] == pytest.approx(0.25) and gpu["uncovered_gap_ms"]["n"] == 1
    assert gpu["util"]["n"] == 6  # the sample at 110 s is outside the training window
    assert gpu["util_inside_trials_mean"] == pytest.approx((80 + 60 + 90) / 3)
    assert gpu["util_between_trials_mean"] == 0.0
    assert gpu["idle_runs_ms"]["n"] == 1 and gpu["idle_runs_ms"]["max"] == pytest.approx(1300.0)
    assert gpu["busy_share"] == pytest.approx(0.5)


@pytest.mark.timeout(10)
def test_gpu_of_reads_worker_ids_and_the_table_prints_a_gpu_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.gpu_of("node1-w3-gpu7-0a1b2c") == 7 and gpu_check.gpu_of("node1-w0-f00d00") is None
    run = gpu_check.training_figures([Attempt(1, 1, "h-w0-gpu0-aaaaaa", 0.0, 1.0, 1, True)],
                                     sampler_with([(0.5, 50.0)]))
    results = {"env": {"python": "3.12", "torch": "2.11", "cuda_build": "13.0", "cpus": 16,
                       "gpus": [{"index": 0, "name": "H200", "memory_gib": 139.8}]},
               "sampler": "nvml", "runs": {"1_per_gpu": {**run, "finished": True}},
               "checkpoint": {"saved_on": "cuda:0", "ok": True, "load_path_devices": ["cpu"], "loads": {}},
               "zygote": {"cuda_init_at_import": {"ok": True, "warning": "w"}}, "total_s": 1.0, "ok": True}
    gpu_check.print_table(results)
    out = capsys.readouterr().out
    assert "GPU 0: H200" in out and "1_per_gpu" in out and "50.0" in out and "no GPU" not in out


@pytest.mark.timeout(10)
def test_busy_goals_read_the_gpu_samples_against_issue_24s_thresholds(tmp_path: Path) -> None:
    busy = {"gpus": {"0": {"busy_share": 0.95, "idle_share_by_samples": 0.01, "uncovered_share": 0.0}}}
    idle = {"gpus": {"0": {"busy_share": 0.42, "idle_share_by_samples": 0.2, "uncovered_share": 0.1}}}
    assert gpu_check.busy_goals(busy)["busy_ok"] and gpu_check.busy_goals(busy)["idle_ok"]
    goals = gpu_check.busy_goals(idle)
    assert not goals["busy_ok"] and not goals["idle_ok"] and goals["busy_share"] == 0.42
    assert not gpu_check.busy_goals({})["busy_ok"]  # no samples: no claim
    source = gpu_check.busy_variant(tmp_path, "busy_cpu", gpu=False).read_text()
    compile(source, "busy_cpu.py", "exec")  # the written experiment file is valid Python
    assert "ctx.load_checkpoint()" in source and "ctx.save_checkpoint(" in source
