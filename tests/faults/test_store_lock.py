"""Hardening: one writer per store (docs/design.md §8.4 "One writer").

Two ``pbt-actors run`` (or ``controller``) on the same store used to both start and write
the same LMDB environment. The writer now holds an exclusive lock in the store folder; a
second one exits at once naming the holder, while readers (``status``, ``verify``) still
read the live store.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pbt_actors.model.errors import StoreError, StoreLocked
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import EXPERIMENTS, env_with, start, worker_pids
from tests.support.waiting import wait_until

SLOW = EXPERIMENTS / "preemptible.py"
SLOW_ENV = env_with(FAULT_STEP_SLEEP_S=0.5, FAULT_MAX_STEPS=400, FAULT_STEPS_PER_TRIAL=200)


def test_a_second_writer_in_this_process_is_refused_and_the_lock_is_released_at_close(tmp_path: Path) -> None:
    store = LmdbTrialStore(tmp_path / "s", sync=False)
    with pytest.raises(StoreLocked, match=rf"store {tmp_path / 's'} is in use by pid {os.getpid()} on host "
                                          rf"{socket.gethostname()}"):
        LmdbTrialStore(tmp_path / "s", sync=False)
    assert issubclass(StoreLocked, StoreError)
    store.close()
    LmdbTrialStore(tmp_path / "s", sync=False).close()  # free again


@pytest.mark.timeout(240)
def test_a_second_run_or_controller_on_a_live_store_exits_at_once_naming_the_holder(tmp_path: Path) -> None:
    store = tmp_path / "run"
    first = start("run", str(SLOW), "--workers", "1", "--devices", "cpu", "--store", str(store), "--quiet",
                  env=SLOW_ENV)
    wait_until(lambda: worker_pids(store / "checkpoints"), 90, "the first run's worker")
    expected = f"pbt-actors: store {store} is in use by pid {first.pid} on host {socket.gethostname()}"
    for argv in (["run", str(SLOW), "--workers", "1", "--devices", "cpu", "--store", str(store), "--quiet"],
                 ["controller", str(SLOW), "--store", str(store), "--bind", "tcp://127.0.0.1:0"]):
        second = start(*argv, env=SLOW_ENV)
        assert second.wait(60) == 2, second.output()
        assert expected in second.output() and "Traceback" not in second.output(), second.output()
    status = start("status", "--store", str(store), "--json")  # a reader, while the writer runs
    assert status.wait(60) == 0, status.output()
    assert json.loads(status.output())["trials"] >= 1
    assert first.poll() is None  # the first run is untouched
