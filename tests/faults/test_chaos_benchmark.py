"""The chaos benchmark (``benchmarks/chaos.py``), run on the toy: it kills workers at a fixed
rate, the run still completes with every invariant intact, and the compute redone is what the
kills destroyed (the steps in flight), not more."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.faults.harness import env_with, spawn
from tests.support.runs import REPO, TOY

CHAOS = REPO / "benchmarks" / "chaos.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_chaos_benchmark_measures_redone_compute_on_the_toy(tmp_path: Path) -> None:
    argv = ["--experiment", str(TOY), "--workers", "2", "--kill-every", "1.5", "--kills", "6", "--force",
            "--warmup", "2", "--store", str(tmp_path / "store"), "--seed", "1", "--json"]
    env = env_with(TOY_STEP_SLEEP_S=0.1, TOY_MAX_STEPS=60)
    proc = spawn([sys.executable, str(CHAOS), *argv], env=env)
    assert proc.wait(280) == 0, proc.output()
    result = json.loads(proc.output().strip().splitlines()[-1])
    steps = result["steps"]
    assert result["kills"] == 6 and result["exit_code"] == 0
    assert result["verify"]["ok"], result["verify"]
    assert steps["useful"] >= 4 * 60 - 20  # about 4 lineages of 60 steps (some lag a trial behind)
    assert steps["executed"] == steps["useful"] + steps["redone"]
    assert len(steps["in_flight_at_kills"]) == 6 and steps["minimum"] > 0
    # nothing redone beyond the steps the kills destroyed (a little slack for timing)
    assert 1.0 <= result["ratio"] <= 1.25, result
