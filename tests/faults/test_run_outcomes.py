"""Issue 20: how a run ends when nothing went right. An experiment file that exits or is
interrupted at import, a run in which no trial completed, trials that hang before any
completed: each ends the command with one line that says why and an exit code that is not a
success, driven from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import EXPERIMENTS, start


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
