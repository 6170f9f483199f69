"""Issue 4, item 4: the controller SIGKILLed mid-run and restarted on the same store (same
port). Workers keep training, reconnect and deliver the reports they buffered; no trial is lost
or completed twice; and the decisions after each restart are those an uninterrupted run makes.

What can be compared: with one worker the order of events is fixed (request, train, report,
request, ...), and every decision derives from the store and ``(seed, trial id, kind)``, so
the whole trial graph (ids, generations, hyperparameters, parents, crossovers, origins, step
ranges, metrics, checkpoint hashes) must equal an uninterrupted reference run's. Attempts,
history, timestamps and lease data may differ: a request answered by the dead controller is
re-asked, which re-queues and re-leases the same trial as a new attempt.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.model.protocol import TrialAssignment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.runtime.worker.worker_actor import TrialSlot
from pbt_actors.runtime.worker.worker_client import WorkerClient
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import (
    Proc,
    env_with,
    free_port,
    running,
    start_controller,
    start_host,
    trials,
    verify_cli,
    worker_pids,
)
from tests.support.runs import TOY, assert_complete_lineage
from tests.support.waiting import wait_until

ENV = env_with(TOY_STEP_SLEEP_S=0.05, TOY_MAX_STEPS=40, TOY_LEASE_S=60)  # 32 trials of ~0.25 s
KILL_AFTER_COMPLETED = (5, 17)


def _graph(trial: Trial) -> dict[str, Any]:
    """A trial minus what depends on timing or on which process ran it."""
    ckpt = trial.checkpoint
    return {
        "id": trial.id, "generation": trial.generation, "hparams": dict(trial.hparams),
        "steps": (trial.start_step, trial.end_step), "origin": trial.origin.to_dict(),
        "parent": trial.parent_id, "crossover": trial.crossover_id, "status": trial.status.value,
        "final": dict(trial.final or {}), "measurements": [m.to_dict() for m in trial.measurements],
        "checkpoint": None if ckpt is None else (ckpt.sha256, ckpt.bytes, ckpt.step), "initiated": trial.initiated,
    }


def _completed(store: Path) -> int:
    return sum(t.status is TrialStatus.COMPLETED for t in trials(store))


def _reference(root: Path, out: dict[str, Any]) -> None:
    try:
        controller, endpoint = start_controller(TOY, root / "store", env=ENV)
        host = start_host(TOY, endpoint, root / "ckpt", "ref", 1, env=ENV)
        out["host"], out["controller"] = host.wait(200), controller.wait(60)
    except BaseException as exc:  # reported by the main thread
        out["error"] = exc


@pytest.mark.timeout(300)
def test_a_sigkilled_controller_restarts_on_its_store_and_decides_as_if_never_stopped(tmp_path: Path) -> None:
    ref: dict[str, Any] = {}
    reference = threading.Thread(target=_reference, args=(tmp_path / "reference", ref), daemon=True)
    reference.start()

    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    bind = f"tcp://127.0.0.1:{free_port()}"
    controller, endpoint = start_controller(TOY, store, bind, env=ENV)
    host = start_host(TOY, endpoint, ckpt, "solo", 1, env=ENV)
    worker_pid = wait_until(lambda: worker_pids(ckpt).get("solo-w0"), 60, "the worker process")
    delivered_late: list[tuple[Trial, float]] = []
    controllers: list[Proc] = [controller]
    for threshold in KILL_AFTER_COMPLETED:
        wait_until(lambda t=threshold: _completed(store) >= t and running(store), 120,  # type: ignore[misc]
                   f"{threshold} completed trials and one running")
        controllers[-1].kill_group()  # SIGKILL, mid-run
        in_flight = running(store)  # what the dead controller had leased
        for trial in in_flight:  # the worker finishes training it with no controller: its checkpoint appears
            folder = ckpt / "toy_lineage" / f"trial-{trial.id:06d}"
            wait_until(lambda f=folder: f.exists() and any(f.glob("*.ckpt")), 60,  # type: ignore[misc]
                       f"trial {trial.id} trained to the end while the controller was down")
        assert worker_pids(ckpt).get("solo-w0") == worker_pid  # the worker kept running
        restarted_at = time.time()
        restarted, _ = start_controller(TOY, store, bind, env=ENV)  # same store, same port
        controllers.append(restarted)
        delivered_late += [(t, restarted_at) for t in in_flight]
    assert host.wait(200) == 0, host.output()
    assert controllers[-1].wait(60) == 0, controllers[-1].output()
    assert delivered_late, "a trial should have been in flight at a kill"

    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, ckpt)  # nothing lost, every trial completed exactly once
        for before, restarted_at in delivered_late:
            after = s.get_trial(before.id)
            # the report buffered through the outage was delivered and accepted: not retrained
            assert after.completed_attempt == before.attempt, (before, after)
            assert after.ended_at is not None and after.ended_at >= restarted_at
        chaos = [_graph(t) for t in s.iter_trials()]
    assert verify_cli(store, ckpt)["ok"]

    reference.join(240)
    assert not reference.is_alive() and "error" not in ref, ref
    assert ref["host"] == 0 and ref["controller"] == 0
    with LmdbTrialStore(tmp_path / "reference" / "store", readonly=True) as s:
        expected = [_graph(t) for t in s.iter_trials()]
    assert len(chaos) == len(expected)
    for got, want in zip(chaos, expected, strict=True):
        assert got == want


@pytest.mark.timeout(60)
def test_heartbeats_do_not_pile_up_while_the_controller_is_gone(tmp_path: Path) -> None:
    """Each heartbeat waits its timeout (2 s) for a controller that is not there while the
    ticker fires every 50 ms: at most one may wait in the worker actor's inbox, so an outage
    of any length costs no memory and, once the controller is back, no burst of stale beats."""
    _, train = load_experiment_file(TOY)
    client = WorkerClient(f"tcp://127.0.0.1:{free_port()}", train, str(tmp_path), worker_id="alone")
    try:
        spec = TrialAssignment(
            1,
            1,
            generation=0,
            hparams={"h0": 1.0, "h1": 0.0},
            start_step=0,
            end_step=5,
            parent_id=None,
            parent_checkpoint=None,
            heartbeat_s=0.05,
            experiment="toy_lineage",
        )
        client.connection.begin_trial(spec, TrialSlot()).get(timeout=5)  # as if a trial were running
        client._heartbeat_s = 0.05
        client._ticker_wake.set()  # as run_trial does when a trial sets the interval
        deadline, deepest = time.monotonic() + 5, 0  # two and a half heartbeat timeouts
        while time.monotonic() < deadline:
            deepest = max(deepest, client.actor.actor_inbox.qsize())
            time.sleep(0.01)
        assert deepest <= 1, deepest
    finally:
        client.connection.end_trial.defer()
        client.close()
