"""A report the controller failed to apply (``error(internal)``) is sent again by the worker.

Real controller (actor, bridge, ZeroMQ over tcp loopback, LMDB) and a real ``WorkerClient``; the
fault is injected into the controller core: its first two attempts to apply the report raise,
so the batch is rolled back and the worker is told ``internal``. The trial must still complete
as attempt 1, long before its (one hour) lease could expire.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import pbt_actors.runtime.worker as worker_module
from pbt_actors.runtime.controller import Controller
from pbt_actors.control.core import ControllerCore
from pbt_actors.runtime.launch import load_experiment_file
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.worker import WorkerClient
from tests.support.runs import TOY

pytestmark = pytest.mark.timeout(120)


def test_a_report_answered_internal_error_is_sent_again_until_applied(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    experiment, train = load_experiment_file(TOY)
    experiment = replace(experiment, lease_s=3600.0)
    monkeypatch.setattr(worker_module, "INTERNAL_ERROR_BACKOFF_S", 0.05)
    attempts: list[int] = []
    original = ControllerCore._report

    def failing_twice(self, msg, now):  # type: ignore[no-untyped-def]
        attempts.append(msg.trial_id)
        if len(attempts) <= 2:
            raise RuntimeError("injected: the store is having a bad day")
        return original(self, msg, now)

    monkeypatch.setattr(ControllerCore, "_report", failing_twice)
    handle = Controller.start(experiment, tmp_path / "store", "tcp://127.0.0.1:0")
    client = WorkerClient(handle.endpoint, train, str(tmp_path / "ckpt"), worker_id="resender")
    try:
        assert client.run_one()
        status = handle.status()
        assert status.by_status["completed"] == 1 and status.by_status["running"] in (0, 1)
        assert attempts[:3] == [1, 1, 1]  # refused twice, applied the third time
    finally:
        client.close()
        handle.stop()
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    with LmdbTrialStore(tmp_path / "store", readonly=True) as store:
        first = store.get_trial(1)
        assert first.status is TrialStatus.COMPLETED and first.completed_attempt == 1 and first.attempt == 1
