"""The faces' rough edges of issue 22, from the command line.

* ``pbt-actors export ... | head``: a reader that leaves early ends the export as it ends a Unix
  tool, with exit 141 (SIGPIPE's) and no traceback. The pipe's read end is closed before the
  export writes anything, so every write fails: no timing decides whether the pipe breaks.
* ``sim --store lmdb`` says where it wrote its store; ``status`` counts the retried attempts
  apart from failed trials and ``status --failures`` lists them with their last error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_SIGPIPE
from pbt_actors.control.run_notes import attempt_failures
from pbt_actors.model.records import TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.support.runs import REPO, cli
from tests.support.sim_stores import sim_store


@pytest.mark.timeout(90)
def test_export_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path) -> None:
    store = sim_store(tmp_path / "sim", 40)
    for fmt in ("csv", "json"):
        _export_into_closed_pipe(store, fmt)


def _export_into_closed_pipe(store: Path, fmt: str) -> None:
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


@pytest.mark.timeout(90)
def test_sim_says_where_its_store_is_and_status_lists_retried_attempts(tmp_path: Path) -> None:
    root = tmp_path / "sim"
    proc = cli("sim", "--objective", "curve", "--population", "16", "--seeds", "1", "--max-trials", "120",
               "--max-steps", "500", "--workers", "8", "--preempt-rate", "3", "--store", "lmdb", "--store-dir",
               str(root), "--quiet")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    (store,) = [p for p in root.iterdir() if (p / "data.mdb").exists()]
    assert "1 store(s) written:" in out and f"  {store.resolve()}" in out.splitlines(), out
    with LmdbTrialStore(store, readonly=True) as opened:
        expected = attempt_failures(opened.iter_trials())
        failed = opened.count(TrialStatus.FAILED)
    assert expected.retried > 0  # preemptions: attempts lost and retried

    proc = cli("status", "--store", str(store))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert (f"retried      {expected.retried} failed attempt(s) in {len(expected.trials)} trial(s) "
            f"({expected.crashed} the trial's own failures, {expected.lost} lost to the machine)") in out, out
    assert f"apart from the {failed} failed trial(s)" in out and f"--store {store} --failures" in out

    proc = cli("status", "--store", str(store), "--failures", "--json")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    listed = json.loads(out)
    assert listed["retried_attempts"] == expected.retried and len(listed["trials"]) == len(expected.trials)
    assert all(row["error"] for row in listed["trials"])  # each with its last error text
    proc = cli("status", "--store", str(store), "--failures")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.count("\n--- trial ") == len(expected.trials), out
