"""Helpers for tests that run real processes: the CLI, stores, lineage checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.storage.trial_store import TrialStore
from pbt_actors.tools.verify import verify_store

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "integration" / "experiments" / "toy_lineage.py"


def cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", *args], env=full_env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen[str]] = []


def kill_all_started() -> None:
    """Kill every process group a test started (worker processes included), even on failure."""
    while _STARTED:
        proc = _STARTED.pop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before printing {needle!r}")
    raise AssertionError(f"no {needle!r} within {timeout_s}s")


def output_once_exited(proc: subprocess.Popen[str], timeout_s: float, kept_running: str) -> str:
    """``proc``'s output once it exits; killed, and the test failed with ``kept_running``, if it
    is still running after ``timeout_s`` (a process that should have been refused)."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"{kept_running}:\n{out}") from None
    return out


def assert_complete_lineage(store: TrialStore, checkpoint_root: Path) -> None:
    """Every trial completed once, children after and from their parents' checkpoints."""
    report = verify_store(store, checkpoint_root, finished=True)
    assert report.ok, report.problems
    trials = list(store.iter_trials())
    assert trials and all(t.status is TrialStatus.COMPLETED for t in trials), \
        [(t.id, t.status.value, t.error) for t in trials if t.status is not TrialStatus.COMPLETED]
    assert report.checkpoints_checked == len(trials)
    for trial in trials:
        state = load_checkpoint(checkpoint_root, trial.checkpoint)
        assert state["trial"] == trial.id
        if trial.parent_id is None:
            assert state["parent_sha256"] is None
        else:
            assert state["parent_sha256"] == store.checkpoint(trial.parent_id).sha256, trial.id


def drive_embedded_workers(handle: Any, train: Any, checkpoint_root: Path, count: int = 2,
                           timeout_s: float = 90) -> list[Any]:
    """``count`` in-process ``WorkerClient``s, each driven by its own thread the way a host
    program embeds them (``while client.run_one()``), until the run finishes; the caller closes
    the returned clients."""
    import threading

    from pbt_actors.runtime.worker.worker_client import WorkerClient

    clients = [WorkerClient(handle.endpoint, train, str(checkpoint_root), worker_id=f"embedded-{i}")
               for i in range(count)]

    def host_loop(client: WorkerClient) -> None:
        while client.run_one():  # the host program drives the loop itself
            pass

    threads = [threading.Thread(target=host_loop, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    try:
        assert handle.wait(timeout_s=timeout_s)
    finally:
        for thread in threads:
            thread.join(timeout=30)
    return clients

