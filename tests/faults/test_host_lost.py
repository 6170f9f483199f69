"""Issue 4, item 3: a whole host lost. SIGKILL a ``pbt-actors worker`` host process together with
all its workers (no supervisor is left to say ``worker_lost``): its trials return to the queue
at lease expiry and the other host finishes the run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import env_with, running, start_controller, start_host, verify_cli, worker_pids
from tests.support.runs import TOY, assert_complete_lineage
from tests.support.waiting import wait_until

LEASE_S = 5.0


@pytest.mark.timeout(300)
def test_a_killed_host_loses_its_leases_and_the_other_host_finishes(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    env = env_with(TOY_LEASE_S=LEASE_S, TOY_STEP_SLEEP_S=0.1, TOY_MAX_STEPS=60)
    controller, endpoint = start_controller(TOY, store, env=env)
    doomed = start_host(TOY, endpoint, ckpt, "doomed", 2, env=env)
    survivor = start_host(TOY, endpoint, ckpt, "survivor", 2, env=env)

    def doomed_busy() -> list[int] | None:
        ids = [t.id for t in running(store) if t.lease is not None and t.lease.worker.startswith("doomed-")]
        return ids if len(ids) == 2 else None

    wait_until(doomed_busy, 90, "both workers of the doomed host running a trial")
    doomed.kill_group()  # the host supervisor and its workers, all at once
    killed_at = time.time()
    # SIGKILL to a group lands on each process as it is next scheduled: poll, do not assert at once
    wait_until(lambda: not [w for w in worker_pids(ckpt) if w.startswith("doomed-")], 10,
               "the doomed host's workers gone")
    orphans = [t for t in running(store) if t.lease is not None and t.lease.worker.startswith("doomed-")]
    assert orphans, "the doomed host's trials should still be leased to it"

    assert survivor.wait(240) == 0, survivor.output()
    assert controller.wait(60) == 0, controller.output()
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, ckpt)
        for orphan in orphans:
            trial = s.get_trial(orphan.id)
            assert trial.completed_attempt is not None and trial.completed_attempt > orphan.attempt
            assert trial.worker is not None and trial.worker.startswith("survivor-"), trial.worker
            lost = [h for h in trial.history if h[0] == orphan.attempt]
            assert lost and lost[0][1].startswith("doomed-")
            released_at = lost[0][3]
            # nobody said worker_lost: the trial waited for its lease (renewed until the kill; under
            # load the last renewal may be a little older than the heartbeat interval)
            assert released_at >= killed_at + LEASE_S / 2, (released_at - killed_at, trial.history)
            assert "lease expired" in (trial.error or ""), trial.error
    assert verify_cli(store, ckpt)["ok"]
