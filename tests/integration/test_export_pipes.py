"""``pbt-actors export ... | head``: a reader that leaves early ends the export as it ends a Unix
tool, with exit 141 (SIGPIPE's) and no traceback (issue 22, item 14).

The pipe's read end is closed before the export writes anything, so every write fails: no
timing decides whether the pipe breaks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_SIGPIPE
from tests.support.runs import REPO
from tests.support.sim_stores import sim_store


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path, fmt: str) -> None:
    store = sim_store(tmp_path / "sim", 40)
    proc = subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", "export", "--store", str(store), "--format", fmt],
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `head` has read what it wanted and left
    try:
        err = proc.stderr.read()
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_SIGPIPE == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""
