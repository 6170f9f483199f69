"""The compute budget on a real run (CLI, 2 worker processes, ZeroMQ, LMDB) and the quality
benchmark's quick mode.

``budget_steps`` promise (docs/design.md §6.6): total steps trained <= budget + work in flight. Without
faults nothing is re-run, so the steps the workers report having trained must equal the steps
the controller leased, and both must be <= the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runs import REPO, cli, kill_all_started

EXPERIMENT = REPO / "tests" / "integration" / "experiments" / "budget_counter.py"


@pytest.fixture(autouse=True)
def _kill_processes():
    yield
    kill_all_started()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_spends_exactly_the_budget(tmp_path: Path) -> None:
    budget = 47  # 4 lineages x 30 steps would be 120; 9 trials of 5 steps fit, a 10th would not
    logs = tmp_path / "logs"
    logs.mkdir()
    store = tmp_path / "store"
    proc = cli("run", str(EXPERIMENT), "--workers", "2", "--devices", "cpu", "--store", str(store),
               "--budget-steps", str(budget), env={"BUDGET_LOG_DIR": str(logs)})
    out, _ = proc.communicate(timeout=100)
    assert proc.returncode == 0, out
    assert f"steps 45/{budget}" in out  # the summary line (and the progress line's format)
    trained = [line.split() for f in logs.iterdir() for line in f.read_text().splitlines()]
    assert sum(int(t[3]) for t in trained) == 45 <= budget
    assert len({t[0] for t in trained}) == len(trained) == 9  # each trial trained once

    status = subprocess.run([sys.executable, "-m", "pbt_actors.cli", "status", "--store", str(store), "--json"],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO), check=False)
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["budget"] == {"budget_steps": budget, "leased_steps": 45, "queued_steps": 0,
                                 "retried_steps": 0}
    assert summary["finished"] is True


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quality_benchmark_quick_mode(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "quality.md"
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick", "--jobs", "1",
                           "--out", str(out), "--results", str(results)],
                          capture_output=True, text=True, timeout=170, cwd=str(REPO), check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(results.read_text())
    assert {r["config"] for r in rows} == {"initiator", "truncation-20", "random"}
    for row in rows:
        assert row["leased_steps"] <= row["budget"]
        assert 0.0 <= row["final_mean"] <= 1.0 and 0.0 <= row["best"] <= 1.0
    text = out.read_text()
    assert "| `random`: random (no exploit) | 2 |" in text and "python benchmarks/quality.py --quick" in text
