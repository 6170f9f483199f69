"""Helpers of the fault suite: real CLI processes, their output, their worker pids, the store.

Every process is started through ``tests.support.runs.cli`` (its own process group, killed by
the autouse fixture after each test, whatever happened). Waiting is always polling of
observable state (store records, files, process exit) against a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.support.runs import REPO, cli

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE / "experiments"


class Proc:
    """A started CLI process whose merged stdout/stderr is drained by a thread (so that a
    chatty process never blocks on a full pipe) and kept for assertions."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for_line(self, needle: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} within {timeout_s}s; output:\n{''.join(self.lines)[-4000:]}")
                if self.popen.poll() is not None and not self._thread.is_alive():
                    raise AssertionError(f"process exited ({self.popen.returncode}) before printing {needle!r}; "
                                         f"output:\n{''.join(self.lines)[-4000:]}")
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout_s: float) -> int:
        """Exit code (the output is complete once this returns)."""
        code = self.popen.wait(timeout_s)
        self._thread.join(10)
        return code

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its process group (a host and its workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, 9)
        self.popen.wait(10)


def start(*args: str, env: dict[str, str] | None = None, **popen: Any) -> Proc:
    return Proc(cli(*args, env=env, **popen))


_SPAWNED: list[subprocess.Popen[str]] = []


def spawn(argv: list[str], env: dict[str, str] | None = None) -> Proc:
    """Any command (not the CLI), like ``cli``: its own process group, merged output, and
    killed with its group after the test (``tests/faults/conftest.py``)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(argv, env=full_env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    _SPAWNED.append(popen)
    return Proc(popen)


def kill_spawned() -> None:
    while _SPAWNED:
        popen = _SPAWNED.pop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)


def start_controller(experiment: Path, store: Path, bind: str = "tcp://127.0.0.1:0", *,
                     env: dict[str, str] | None = None, linger_s: float = 5) -> tuple[Proc, str]:
    """``pbt-actors controller``; returns it and the endpoint it listens on."""
    proc = start("controller", str(experiment), "--store", str(store), "--bind", bind, "--linger", str(linger_s),
                  env=env)
    line = proc.wait_for_line("listening on", timeout_s=90)
    return proc, line.split("listening on ")[1].split()[0]


def start_host(experiment: Path, endpoint: str, checkpoint_root: Path, host_id: str, workers: int, *,
               env: dict[str, str] | None = None, stop_grace_s: float | None = None, **popen: Any) -> Proc:
    """``pbt-actors worker``: a host supervisor with ``workers`` CPU worker processes."""
    grace = () if stop_grace_s is None else ("--stop-grace", str(stop_grace_s))
    return start("worker", str(experiment), "--connect", endpoint, "--devices", "cpu", "--workers", str(workers),
                 "--checkpoint-root", str(checkpoint_root), "--host-id", host_id, *grace, env=env, **popen)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the store, read from outside like `pbt-actors status` does ------------------------------------
@contextlib.contextmanager
def reading(store_dir: Path) -> Iterator[LmdbTrialStore | None]:
    """A read-only view of the store, or None before the controller created it."""
    if not (store_dir / "data.mdb").exists():
        yield None
        return
    with LmdbTrialStore(store_dir, readonly=True) as store:
        yield store


def trials(store_dir: Path) -> list[Trial]:
    with reading(store_dir) as store:
        return [] if store is None else list(store.iter_trials())


def running(store_dir: Path) -> list[Trial]:
    with reading(store_dir) as store:
        return [] if store is None else store.trials(store.ids_with_status(TrialStatus.RUNNING))


def finished(store_dir: Path) -> bool:
    """The run is over by the controller's own rule (``run_finished``); False with no store yet."""
    from pbt_actors.control.progress import run_finished

    with reading(store_dir) as store:
        return store is not None and run_finished(store)


def verify_cli(store_dir: Path, checkpoint_root: Path) -> dict[str, Any]:
    """``pbt-actors verify --json``: its report, asserting it exits 0 exactly when it is ok."""
    proc = start("verify", "--store", str(store_dir), "--checkpoint-root", str(checkpoint_root), "--json")
    code = proc.wait(120)
    report: dict[str, Any] = json.loads(proc.output().strip().splitlines()[-1])
    assert code == (0 if report["ok"] else 1), proc.output()
    return report


# --- worker processes --------------------------------------------------------------------------------
def worker_pids(checkpoint_root: Path) -> dict[str, int]:
    """``worker id -> pid`` of the live worker processes of every host under ``checkpoint_root``,
    from the host state files the supervisors publish (what ``pbt-actors status`` reads). The
    root is unique per test, so other tests' workers never match; a killed host leaves its file
    behind, so a pid counts only while its process lives."""
    from pbt_actors.runtime.host.host_state import read_host_states

    return {str(child["id"]): int(child["pid"]) for state in read_host_states(checkpoint_root)
            for child in state["children"]
            if child.get("state") == "running" and child.get("pid") is not None and pid_alive(int(child["pid"]))}


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        os.kill(pid, 0)
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


# --- the step trace written by the fault experiments (``experiments/_common.py``) --------------
def read_trace(trace_dir: Path) -> dict[tuple[int, int], list[int]]:
    """``(trial, attempt) -> steps executed``, over every process that ever ran."""
    steps: dict[tuple[int, int], list[int]] = defaultdict(list)
    if not trace_dir.exists():
        return steps
    for path in sorted(trace_dir.glob("*.trace")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                trial, attempt, step = map(int, parts)
                steps[(trial, attempt)].append(step)
    return steps


def first_attempt_mid_trial(host_id: str, store: Path, trace: Path) -> Trial | None:
    """A first attempt leased to a worker of ``host_id`` with at least 3 steps done and 4 to go:
    the moment a preemption test strikes, so that both the steps before and after it count."""
    done = read_trace(trace)
    for trial in running(store):
        steps = len(done.get((trial.id, trial.attempt), []))
        if (trial.attempt == 1 and trial.lease is not None and trial.lease.worker.startswith(f"{host_id}-")
                and 3 <= steps <= trial.steps - 4):
            return trial
    return None


def env_with(**values: object) -> dict[str, str]:
    return {k: str(v) for k, v in values.items()}
