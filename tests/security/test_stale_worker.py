"""Item 2: a worker that missed ``done`` must not join the next run on the same port.

Real processes and sockets: run A's controller (embedded) and a worker process; the worker is
stopped (SIGSTOP) mid-trial, run A's controller goes away, run B (a fresh store, hence a fresh
run id) binds the *same* address, and the worker is continued (SIGCONT). It must be refused
``wrong_run`` and exit with ``EXIT_WRONG_RUN`` without taking any of run B's trials. Before
run ids, it reported into run B, asked it for work and trained B's trials, writing their
checkpoints into run A's checkpoint root (over A's files of the same names).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_WRONG_RUN
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_RUN_ID
from tests.security.conftest import STEP_ENV, free_tcp_address, wait_until
from tests.support.runs import REPO, TOY

pytestmark = pytest.mark.timeout(120)


def start_worker(connect: str, worker_id: str, root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **STEP_ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", "worker-process", str(TOY), "--connect",
                             connect, "--worker-id", worker_id, "--checkpoint-root", str(root)],
                            env=env, cwd=str(REPO), start_new_session=True)


def test_a_stale_worker_is_refused_by_the_next_run_and_exits(tmp_path: Path) -> None:
    experiment, _ = load_experiment_file(str(TOY))
    address = free_tcp_address()
    root_a = tmp_path / "ckpt-a"
    run_a = Controller.start(experiment, tmp_path / "store-a", address)
    worker = start_worker(address, "stale-w0", root_a)
    run_b = None
    try:
        wait_until(lambda: "stale-w0" in run_a.status().running_workers, 60, "the worker to run a trial of run A")
        os.kill(worker.pid, signal.SIGSTOP)  # it misses the end of run A
        run_a.stop()
        run_b = Controller.start(experiment, tmp_path / "store-b", address)  # same port, new store
        assert run_b.status().run_id and run_b.status().run_id != ""
        os.kill(worker.pid, signal.SIGCONT)
        code = worker.wait(60)
        assert code == EXIT_WRONG_RUN
        assert "stale-w0" not in run_b.status().running_workers
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        run_a.stop()
        if run_b is not None:
            run_b.stop()
    with LmdbTrialStore(tmp_path / "store-b") as store:
        assert all(t.worker != "stale-w0" for t in store.iter_trials()), "run B leased a trial to the stale worker"
        run_id_b = store.get_meta(META_RUN_ID)
    with LmdbTrialStore(tmp_path / "store-a") as store:
        assert store.get_meta(META_RUN_ID) not in (None, run_id_b)
