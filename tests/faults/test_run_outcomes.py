"""Issue 20: how a run ends when nothing went right. An experiment file that exits or is
interrupted at import, a run in which no trial completed, trials that hang before any
completed: each ends the command with one line that says why and an exit code that is not a
success, driven from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_NO_RESULT
from tests.faults.harness import EXPERIMENTS, env_with, start, start_controller, start_host


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("experiment", "code", "expected"), [
    ("exits_at_import.py", 2, "called sys.exit(3) while being imported"),  # was: exit 3, not a word
    ("interrupted_at_import.py", 130, "interrupted while importing the experiment file"),  # was: a traceback
])
@pytest.mark.parametrize("command", ["run", "controller"])
def test_an_experiment_file_that_exits_at_import_says_so_in_one_line(tmp_path: Path, experiment: str, code: int,
                                                                      expected: str, command: str) -> None:
    extra = ["--workers", "1", "--devices", "cpu"] if command == "run" else ["--bind", "tcp://127.0.0.1:0"]
    proc = start(command, str(EXPERIMENTS / experiment), "--store", str(tmp_path / "store"), *extra)
    assert proc.wait(90) == code, proc.output()
    out = proc.output()
    assert "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pbt-actors: ") and expected in lines[0], out
    assert str(EXPERIMENTS / experiment) in lines[0]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["run", "controller"])
def test_a_run_in_which_no_trial_completed_exits_non_zero_saying_why(tmp_path: Path, command: str) -> None:
    """Was: every trial FAILED, the summary said ``finished`` and the command exited 0."""
    store, experiment = tmp_path / "store", EXPERIMENTS / "always_fails.py"
    env = env_with(FAULT_MAX_ATTEMPTS=1)
    if command == "run":
        proc = start("run", str(experiment), "--workers", "2", "--devices", "cpu", "--store", str(store), env=env)
    else:
        proc, endpoint = start_controller(experiment, store, env=env, linger_s=1)
        host = start_host(experiment, endpoint, tmp_path / "ckpt", "h", 2, env=env)
        assert host.wait(120) == 0, host.output()
    assert proc.wait(120) == EXIT_NO_RESULT != 0, proc.output()
    lines = [line for line in proc.output().splitlines() if line.startswith("pbt-actors: ")]
    assert len(lines) == 1, proc.output()
    assert "the run ended with no completed trial" in lines[0] and " failed" in lines[0], lines
    assert "always_fails: trial" in lines[0] and "cannot train" in lines[0], lines  # the last error, in its words
    assert "Traceback" not in lines[0]
    # asked again, a finished store without a result says the same, not "finished" and 0
    again = start("run", str(experiment), "--workers", "1", "--devices", "cpu", "--store", str(store), env=env)
    assert again.wait(120) == EXIT_NO_RESULT, again.output()
    assert "pbt-actors: the run ended with no completed trial" in again.output()
    assert f"to start again once fixed, remove {store} or pass another --store" in again.output()
