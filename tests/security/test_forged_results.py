"""Item 5: a connection that borrows a live worker's routing id cannot report for it.

Real processes and sockets: a worker process ``good-w0`` runs the toy experiment against an
embedded controller; meanwhile a DEALER in the test sets its routing id to ``good-w0`` and
reports every trial completed with an absurd score. With ``ROUTER_HANDOVER=0`` ZeroMQ ignores
the second connection while the first is open, so none of those reports is applied, and the
real worker's connection keeps working: the run completes with genuine results. Before, the
ROUTER handed the identity over to the forger: its report for the running trial was accepted
(and the real worker's replies went to the forger).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import Error, Heartbeat, Report
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.security.conftest import STEP_ENV, free_tcp_address, wait_until
from tests.support.runs import REPO, TOY

pytestmark = pytest.mark.timeout(180)

FORGED = 999.0


def test_a_borrowed_routing_id_cannot_report_and_the_real_worker_finishes(tmp_path: Path) -> None:
    experiment, _ = load_experiment_file(str(TOY))
    address = free_tcp_address()
    handle = Controller.start(experiment, tmp_path / "store", address)
    env = {**os.environ, **STEP_ENV, "TOY_STEP_SLEEP_S": "0.02"}
    worker = subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", "worker-process", str(TOY), "--connect",
                               address, "--worker-id", "good-w0", "--checkpoint-root", str(tmp_path / "ckpt")],
                              env=env, cwd=str(REPO), start_new_session=True)
    answered = []
    try:
        wait_until(lambda: "good-w0" in handle.status().running_workers, 60, "good-w0 to run a trial")
        with WorkerEndpoint(address, "good-w0") as forger:
            for trial_id in range(1, 9):
                for message in (Heartbeat("good-w0", trial_id, 1, 5, {"Q": FORGED}),
                                Report("good-w0", trial_id, 1, {"Q": FORGED})):
                    with contextlib.suppress(RequestTimeout):
                        answered.append(forger.request(message, timeout_s=0.2, retries=0))
        assert all(isinstance(reply, Error) for reply in answered), answered
        assert handle.wait(120), "the real worker's run did not complete"
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        handle.stop()
    with LmdbTrialStore(tmp_path / "store") as store:
        trials = list(store.iter_trials())
        assert trials and all(t.status.value == "completed" for t in trials)
        assert all(t.final.get("Q") != FORGED for t in trials), "a forged report was applied"
        assert all(m.metrics.get("Q") != FORGED for t in trials for m in t.measurements)
