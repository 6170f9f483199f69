"""Issue 24: a worker killed (SIGKILL) or preempted (SIGTERM) while its trial's checkpoint is
written in the background loses nothing and completes nothing twice; ``verify`` is clean.

Real processes: ``pbt-actors controller`` and a ``pbt-actors worker`` host with two CPU
workers, checkpoints in a local folder or in a real S3 server on loopback. Trial 1's first
attempt saves a padded checkpoint (``object_store_toy``'s ``OBJ_PAD_MB``) so that its write
lasts; the test waits until the controller holds trial 1 as a *pending completion* (RUNNING,
its ``final`` recorded: the worker reported and went on while writing) and then signals that
worker. (SIGKILL during an upload to S3 is ``test_object_storage``'s test, which now runs
through the same background path.)
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import running, start_controller, start_host, verify_cli, worker_pids
from tests.support.runs import REPO, assert_complete_lineage
from tests.support.waiting import wait_until

EXPERIMENT = REPO / "tests" / "integration" / "experiments" / "object_store_toy.py"
BUCKET = "pbt-switch-kills"


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    pytest.importorskip("s3fs")
    from tests.support.s3_server import serving_bucket

    with serving_bucket(BUCKET) as server:
        yield server


def _pending_trial_one(store: Path) -> Trial | None:
    return next((t for t in running(store) if t.id == 1 and t.final is not None and t.lease is not None), None)


def _run_and_signal(tmp_path: Path, root: str, env: dict[str, str], sig: signal.Signals, pad_mb: int) -> None:
    store = tmp_path / "store"
    controller, endpoint = start_controller(EXPERIMENT, store, env=env)
    host = start_host(EXPERIMENT, endpoint, root, "host", 2,  # type: ignore[arg-type]
                      env={**env, "OBJ_PAD_TRIAL": "1", "OBJ_PAD_MB": str(pad_mb), "OBJ_MAX_STEPS": "10"})
    held = wait_until(lambda: _pending_trial_one(store), 120, "trial 1 reported pending (its write in flight)")
    worker = held.lease.worker  # type: ignore[union-attr]

    def pid_of_worker() -> int | None:  # slot ids ("host-w0") prefix the per-process worker ids
        return next((pid for slot, pid in worker_pids(root).items()  # type: ignore[arg-type]
                     if worker == slot or worker.startswith(f"{slot}-")), None)

    pid = wait_until(pid_of_worker, 30, f"the pid of {worker}")
    os.kill(pid, sig)
    assert host.wait(240) == 0, host.output()
    assert controller.wait(60) == 0, controller.output()
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, root)  # type: ignore[arg-type]  # nothing lost, every child from its parent
        trials = list(s.iter_trials())
        first = s.get_trial(1)
    # completed once: exactly one completed attempt per trial, and each reproduced at most once
    assert all(t.status is TrialStatus.COMPLETED and t.completed_attempt is not None for t in trials)
    initiators = [t.origin.initiator for t in trials if t.origin.initiator is not None]
    assert len(initiators) == len(set(initiators)), initiators
    if sig is signal.SIGKILL:
        assert first.completed_attempt is not None and first.completed_attempt > 1, first.history
    else:  # a preempted worker finishes its writes and reports them before it leaves
        assert first.completed_attempt == 1, first.history
    assert verify_cli(store, root)["ok"]  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_worker_signalled_during_a_local_background_write(tmp_path: Path, sig: signal.Signals) -> None:
    _run_and_signal(tmp_path, str(tmp_path / "checkpoints"), {}, sig, pad_mb=400)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_preempted_during_a_background_upload(s3, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"term-{uuid.uuid4().hex[:8]}"
    env = {**s3.env, "PBT_ACTORS_CACHE_DIR": str(tmp_path / "cache"), "PBT_ACTORS_UPLOAD_PART_BYTES": str(5 * 2**20)}
    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(tmp_path / "cache"))  # that host's state files (worker_pids)
    _run_and_signal(tmp_path, f"s3://{BUCKET}/{prefix}", env, signal.SIGTERM, pad_mb=48)
