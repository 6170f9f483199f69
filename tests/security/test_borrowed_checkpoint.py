"""Issue 20 item 3: a trial cannot borrow another trial's checkpoint ref.

A raw client on loopback against a real controller (LMDB in tmp) leases trial A, writes and
reports A's checkpoint properly, then leases trial B and reports B with A's ref (uri and
sha256). Before, B completed holding A's file, and retention, finding B not needed, deleted
A's file (a pinned one included). Now a reported ref must lie under the reporting trial's own
key prefix: B's report is refused (its attempt re-queued), and retention deletes only files a
trial owns, so a store that holds such a ref (an older build's) never loses A's file to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.control.retention_rules import META_PINS
from pbt_actors.model.experiment import Experiment, Retention
from pbt_actors.model.protocol import Ack, Hello, Report, RequestTrial, TrialAssignment
from pbt_actors.model.records import Lease, Origin, OriginKind, TrialSpec, TrialStatus, trial_checkpoint_prefix
from pbt_actors.model.space import Float
from pbt_actors.runtime.checkpoint_payloads import save_checkpoint
from pbt_actors.runtime.controller.checkpoint_collector import collect_store, local_deleter
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.faults.harness import trials
from tests.security.conftest import free_tcp_address
from tests.support.runs import TOY

pytestmark = pytest.mark.timeout(120)


def test_a_report_naming_another_trials_checkpoint_is_refused(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_MAX_STEPS", "200")
    experiment, _ = load_experiment_file(str(TOY))
    address = free_tcp_address()
    root = tmp_path / "ckpt"
    handle = Controller.start(experiment, tmp_path / "store", address)
    try:
        with WorkerEndpoint(address, "rogue-w0") as worker:
            hello = worker.request(Hello("rogue-w0"))
            assert isinstance(hello, Ack) and hello.run
            run = hello.run
            a = worker.request(RequestTrial("rogue-w0", run))
            assert isinstance(a, TrialAssignment)
            ref_a = save_checkpoint(root, f"{trial_checkpoint_prefix(a.experiment, a.trial_id)}a{a.attempt}.ckpt",
                                    {"trial": a.trial_id}, a.end_step, keyed=True)
            assert isinstance(worker.request(Report("rogue-w0", a.trial_id, a.attempt, {"Q": 0.5},
                                                    checkpoint=ref_a, run=run)), Ack)
            b = worker.request(RequestTrial("rogue-w0", run))
            assert isinstance(b, TrialAssignment) and b.trial_id != a.trial_id
            worker.request(Report("rogue-w0", b.trial_id, b.attempt, {"Q": 0.9}, checkpoint=ref_a, run=run))
        handle.stop()
        by_id = {t.id: t for t in trials(tmp_path / "store")}
        assert by_id[a.trial_id].status is TrialStatus.COMPLETED and by_id[a.trial_id].checkpoint == ref_a
        borrowed = by_id[b.trial_id]
        assert borrowed.status is not TrialStatus.COMPLETED and borrowed.checkpoint is None, borrowed
        assert borrowed.attempt == b.attempt + 1 and "not under the trial's own prefix" in (borrowed.error or "")
        assert (root / ref_a.uri).exists()
    finally:
        handle.stop()


def test_retention_deletes_only_files_a_trial_owns(tmp_path: Path) -> None:
    """A store already holding a borrowed ref (B -> A's file, A pinned): gc deletes B's entry's
    file only if B owns it, so A's file stays."""
    experiment = Experiment(name="borrow", space={"h": Float(0.0, 1.0)}, objective="Q", population=2,
                            steps_per_trial=5, max_steps=5, retention=Retention(keep_best=0), seed=1)
    root = tmp_path / "ckpt"
    with LmdbTrialStore(tmp_path / "store") as store:
        ids = []
        for i in (1, 2):
            trial = store.create_trial(TrialSpec(generation=0, hparams={"h": 0.1 * i}, start_step=0, end_step=5,
                                                 origin=Origin(OriginKind.SEED)), now=1.0)
            ids.append(trial.id)
        a, b = ids
        ref_a = save_checkpoint(root, f"{trial_checkpoint_prefix('borrow', a)}a1.ckpt", {"trial": a}, 5, keyed=True)
        for trial_id in (a, b):
            trial = store.get_trial(trial_id)
            running = trial.evolve(status=TrialStatus.RUNNING, lease=Lease("w0", 100.0), started_at=2.0, worker="w0")
            assert store.transition(trial_id, TrialStatus.PENDING, trial.attempt, running)
            done = running.evolve(status=TrialStatus.COMPLETED, lease=None, final={"Q": float(trial_id)},
                                  checkpoint=ref_a, completed_attempt=1, ended_at=3.0, initiated=True,
                                  history=((1, "w0", 2.0, 3.0),))
            assert store.transition(trial_id, TrialStatus.RUNNING, trial.attempt, done)
        store.put_meta(META_PINS, [a])
        result = collect_store(store, experiment, local_deleter(root), now=10.0)
        assert b in result.plan.delete  # B is not needed: before, its "checkpoint" (A's file) went
        assert (root / ref_a.uri).exists(), result
        assert result.targets == []
