"""The real system: controller and worker processes over ZeroMQ, LMDB store, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.support.runs import TOY, assert_complete_lineage, cli, drive_embedded_workers, wait_for_line
from tests.support.waiting import wait_until


@pytest.mark.timeout(180)
def test_one_controller_and_two_worker_hosts_on_tcp_run_the_toy_to_completion(tmp_path: Path) -> None:
    store_dir, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller = cli("controller", str(TOY), "--store", str(store_dir), "--bind", "tcp://127.0.0.1:0",
                     "--linger", "30")
    try:
        line = wait_for_line(controller, "listening on")
        endpoint = line.split("listening on ")[1].split()[0]
        slow = {"TOY_STEP_SLEEP_S": "0.1"}  # trials of ~0.5 s, so that both hosts get work
        hosts = [cli("worker", str(TOY), "--connect", endpoint, "--devices", "cpu", "--workers", "2",
                     "--checkpoint-root", str(ckpt), "--host-id", f"host{i}", env=slow) for i in range(2)]
        for host in hosts:
            out, _ = host.communicate(timeout=150)
            assert host.returncode == 0, out
        out, _ = controller.communicate(timeout=60)
        assert controller.returncode == 0, out
    finally:
        for proc in [controller, *locals().get("hosts", [])]:
            if proc.poll() is None:
                proc.kill()
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert_complete_lineage(store, ckpt)
        workers = {t.worker.split("-w")[0] for t in store.iter_trials()}
        assert workers == {"host0", "host1"}  # both hosts did work


@pytest.mark.timeout(180)
def test_pbt_actors_run_gives_the_same_invariants_and_a_json_summary(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    proc = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json")
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["finished"] and summary["best"]["final"]["Q"] > 0.5
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert_complete_lineage(store, store_dir / "checkpoints")
        assert summary["trials"] == store.count()
    again = cli("run", str(TOY), "--store", str(store_dir))
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and "finished run" in out
    status = cli("status", "--store", str(store_dir), "--json")
    out, _ = status.communicate(timeout=60)
    assert json.loads(out)["trials"] == summary["trials"]


@pytest.mark.timeout(180)
def test_a_sigkilled_worker_is_restarted_and_its_trial_requeued_before_lease_expiry(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    env = {"TOY_LEASE_S": "3600", "TOY_STEP_SLEEP_S": "0.4", "TOY_MAX_STEPS": "10"}  # expiry would take an hour
    proc = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json", env=env)
    killed = _kill_one_running_worker(store_dir)
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert_complete_lineage(store, store_dir / "checkpoints")
        victim = store.get_trial(killed)
        assert victim.attempt >= 2 and victim.completed_attempt >= 2
        assert victim.history[0][0] == 1  # the killed attempt is on record
        # re-queued by the supervisor's worker_lost (a lease of an hour never expired)
        assert "lost: process exited with code -9" in (victim.error or ""), victim.error


def _kill_one_running_worker(store_dir: Path, timeout_s: float = 60) -> int:
    """Wait until some trial is RUNNING with progress, SIGKILL its worker process; return the trial id."""

    def killed_one() -> int | None:
        if not (store_dir / "data.mdb").exists():
            return None
        with LmdbTrialStore(store_dir, readonly=True) as store:
            running = store.trials(store.ids_with_status(TrialStatus.RUNNING))
        # a trial lasts ~2 s: kill one that started within the last second, mid-trial
        for trial in running:
            if trial.lease and trial.started_at is not None and 0.2 < time.time() - trial.started_at < 1.0:
                pid = _pid_of_worker(trial.lease.worker, store_dir / "checkpoints")
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    return trial.id
        return None

    return wait_until(killed_one, timeout_s, "a running trial to kill")


def _pid_of_worker(worker_id: str, checkpoint_root: Path) -> int | None:
    """From the host state file this run's supervisor publishes (what `pbt-actors status` reads)."""
    from pbt_actors.runtime.host.host_state import read_host_states

    pids = [c["pid"] for state in read_host_states(checkpoint_root) for c in state["children"]
            if c.get("worker", c["id"]) == worker_id and c["state"] == "running"]  # id: the slot
    return pids[0] if pids else None


@pytest.mark.timeout(120)
def test_embedded_controller_and_host_driven_worker_clients(tmp_path: Path) -> None:
    experiment, train = load_experiment_file(TOY)
    handle = Controller.start(experiment, tmp_path / "store", "tcp://127.0.0.1:0")
    ckpt = tmp_path / "ckpt"
    try:
        clients = drive_embedded_workers(handle, train, ckpt)
        assert sum(c.trials_run for c in clients) == handle.status().total
        for client in clients:
            client.close()
    finally:
        handle.stop()
    with LmdbTrialStore(tmp_path / "store", readonly=True) as store:
        assert_complete_lineage(store, ckpt)


@pytest.mark.timeout(180)
def test_an_interrupted_run_resumes_on_the_same_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    env = {"TOY_STEP_SLEEP_S": "0.05"}
    first = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), env=env)
    def six_completed() -> bool:
        if not (store_dir / "data.mdb").exists():
            return False
        try:
            with LmdbTrialStore(store_dir, readonly=True) as store:
                return store.count(TrialStatus.COMPLETED) >= 6
        except Exception:  # the writer may not have committed its first transaction yet
            return False

    wait_until(six_completed, 60, "six completed trials")
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 130 and "resume" in out, out
    with LmdbTrialStore(store_dir, readonly=True) as store:
        done_before = store.count(TrialStatus.COMPLETED)
        assert 6 <= done_before < store.count() or store.count(TrialStatus.PENDING) > 0
    second = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json", env=env)
    out, _ = second.communicate(timeout=150)
    assert second.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["finished"]
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert_complete_lineage(store, store_dir / "checkpoints")
        assert store.count(TrialStatus.COMPLETED) > done_before
