"""The host supervisor tells the controller ``worker_lost`` without blocking itself.

A real supervisor actor with a real child process that exits with code 1, and a controller
address where nothing listens (a controller that is down or unreachable). Telling it
``worker_lost`` takes the notifier its 3 tries of 2 s; meanwhile the supervisor must keep
answering (status, other children), and the child's restart must wait until the notice was
given up on, so that the controller never hears "lost" after the same worker id asked again.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from pbt_actors.runtime.host.host_supervisor import HostSupervisor
from pbt_actors.runtime.host.lost_notifier import LostNotifier
from pbt_actors.runtime.host.restart_rules import Backoff, ChildSpec, Intensity, Restart
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exits_with_one() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])


def test_an_unreachable_controller_blocks_neither_status_nor_the_restart_order() -> None:
    notice_s = LostNotifier.TRIES * LostNotifier.TIMEOUT_S
    supervisor = HostSupervisor([ChildSpec("w0", exits_with_one, Restart.TRANSIENT)],
                                controller=f"tcp://127.0.0.1:{unused_port()}", intensity=Intensity(5, 60),
                                backoff=Backoff(0.05))
    try:
        started = time.monotonic()
        (child,) = wait_until(lambda: [c for c in supervisor.status() if c.last_exit is not None], 10,
                              "the first exit to be seen", poll_s=0.02)
        assert child.last_exit == 1 and child.state == "waiting"
        asked = time.monotonic()
        (child,) = supervisor.status()  # answered while the notice is still being tried
        assert time.monotonic() - asked < 1.0
        assert child.starts == 1  # not restarted before the controller was told (or given up on)
        wait_until(lambda: supervisor.status()[0].starts >= 2, notice_s + 10, "the restart")
        assert time.monotonic() - started >= notice_s * 0.9
    finally:
        supervisor.stop()


# A worker that leases a trial and dies holding it: hello, request_trial, exit 1.
DIES_HOLDING_A_TRIAL = """
import sys
from pbt_actors.transport.endpoints import WorkerEndpoint
from pbt_actors.model.protocol import Hello, RequestTrial, TrialAssignment
endpoint = WorkerEndpoint(sys.argv[1], sys.argv[2])
ack = endpoint.request(Hello(sys.argv[2]), timeout_s=10)
reply = endpoint.request(RequestTrial(sys.argv[2], ack.run), timeout_s=10)
print("LEASED", type(reply).__name__, getattr(reply, "trial_id", None), flush=True)
raise SystemExit(1 if isinstance(reply, TrialAssignment) else 2)
"""


def test_each_process_of_a_slot_has_its_own_worker_id_and_worker_lost_names_the_dead_one(tmp_path) -> None:
    from pbt_actors.model.records import TrialStatus
    from pbt_actors.runtime.controller.controller_actor import Controller
    from pbt_actors.runtime.host.launch import load_experiment_file
    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from tests.support.runs import TOY

    experiment, _ = load_experiment_file(TOY)
    handle = Controller.start(experiment, tmp_path / "store", "tcp://127.0.0.1:0")
    started: list[str] = []

    def start(worker_id: str) -> subprocess.Popen[bytes]:
        started.append(worker_id)
        return subprocess.Popen([sys.executable, "-c", DIES_HOLDING_A_TRIAL, handle.endpoint, worker_id])

    supervisor = HostSupervisor([ChildSpec("solo-w0", start, Restart.TRANSIENT, fresh_ids=True)],
                                controller=handle.endpoint, host="solo", intensity=Intensity(1, 60),
                                backoff=Backoff(0.05))
    try:
        assert supervisor.wait(40)  # two starts, then it gives up (one restart allowed)
        (child,) = supervisor.status()
        assert child.id == "solo-w0" and child.state == "gave_up" and child.last_exit == 1
        assert child.worker == started[-1]
    finally:
        supervisor.stop()
        handle.stop()
    assert len(started) == 2 and started[0] != started[1]
    assert all(w.startswith("solo-w0-") and len(w) == len("solo-w0-") + 6 for w in started), started
    with LmdbTrialStore(tmp_path / "store", readonly=True) as store:
        trials = list(store.iter_trials())
    (trial,) = [t for t in trials if t.history]  # both leased trial 1 (the oldest pending), in turn
    assert [h[:2] for h in trial.history] == [(1, started[0]), (2, started[1])]  # each under its own id
    # the last death released it at once (no lease expiry), in the words of worker_lost naming that process
    assert trial.status is not TrialStatus.RUNNING and trial.lease is None
    assert f"worker {started[1]} lost: process exited with code 1" in (trial.error or ""), trial.error
