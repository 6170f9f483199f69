"""Issue "hardening", acceptance: one run survives all of it at once.

During run B: a stale worker from the previous run A on the same port (SIGSTOPped mid-trial
of A, continued once B's controller holds the port), a forging client (reports and heartbeats
with an absurd score, under its own identity, under a real worker's routing id and in a real
worker's name; ``worker_lost`` and a supervisor ``hello`` for the other host's workers), a
poison configuration (its worker process SIGKILLs itself, every attempt) and a hung trial
(``train`` never returns while the heartbeats go on; ``trial_timeout_s`` is small). Run B
finishes, ``pbt-actors verify`` is clean, the best result is genuine, the stale worker leaves
with ``EXIT_WRONG_RUN`` having touched nothing of B, the misbehaving trials are FAILED without
the host giving up, and no process the test started outlives it.

Real CLI processes and sockets. Worker ids are matched by slot prefix (``good-w0``...), not
exactly: a host gives each worker process an id of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_WRONG_RUN
from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import Ack, Error, Heartbeat, Hello, Message, Report, Stop, WorkerLost
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_RUN_ID
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.faults.harness import (
    EXPERIMENTS,
    Proc,
    env_with,
    finished,
    free_port,
    pid_alive,
    reading,
    running,
    spawn,
    start_controller,
    start_host,
    verify_cli,
)
from tests.support.waiting import wait_until

EXPERIMENT = EXPERIMENTS / "hardening_chaos.py"
POISON, HANG = 2, 3
FORGED_Q = 1e9
FORGED_REASON = "FORGED worker_lost"
Q_MAX = 1.2  # the toy's Q = 1.2 - |theta|^2
STALE = "stale-w0"

# run A: two trials per generation, trials of ~1.5 s (so the stale worker is surely mid-trial
# when stopped), a short lease so that A re-runs the stopped worker's trial and finishes
ENV_A = env_with(FAULT_POPULATION=2, FAULT_MAX_STEPS=10, FAULT_STEPS_PER_TRIAL=5, FAULT_STEP_SLEEP_S=0.3,
                 FAULT_LEASE_S=4, FAULT_MAX_ATTEMPTS=3)
# run B: 3 generations of 4 trials of ~0.25 s; trial 2 poison, trial 3 hangs (timeout 4 s)
ENV_B = env_with(FAULT_POPULATION=4, FAULT_MAX_STEPS=15, FAULT_STEPS_PER_TRIAL=5, FAULT_STEP_SLEEP_S=0.05,
                 FAULT_LEASE_S=30, FAULT_MAX_ATTEMPTS=2, CHAOS_TRIAL_TIMEOUT_S=4,
                 CHAOS_POISON_TRIALS=POISON, CHAOS_HANG_TRIALS=HANG)


def all_worker_pids(checkpoint_root: Path) -> set[int]:
    """Every worker pid any host under ``checkpoint_root`` last published, whatever its state."""
    from pbt_actors.runtime.host.host_state import read_host_states

    return {int(child["pid"]) for state in read_host_states(checkpoint_root) for child in state["children"]
            if child.get("pid") is not None}


def store_trials(store_dir: Path) -> list[Trial]:
    with LmdbTrialStore(store_dir, readonly=True) as store:
        return list(store.iter_trials())


class Forger:
    """The forging client: every ``round`` sends, for each running trial of run B, what a
    hostile peer on the controller's port can send; it records every answer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers: list[tuple[str, int, Message | None]] = []  # (what, trial, reply; None: no answer)
        self.own = WorkerEndpoint(address, "forger")
        self.rounds = 0

    def _ask(self, endpoint: WorkerEndpoint, what: str, message: Message) -> None:
        trial = int(getattr(message, "trial_id", 0))
        try:
            self.answers.append((what, trial, endpoint.request(message, timeout_s=0.3, retries=0)))
        except RequestTimeout:
            self.answers.append((what, trial, None))

    def round(self, trials: list[Trial]) -> None:
        self.rounds += 1
        good = sorted({t.worker for t in trials if t.worker and t.worker.startswith("good-w")})
        for trial in trials:
            forged = {"Q": FORGED_Q}
            self._ask(self.own, "report as itself", Report("forger", trial.id, trial.attempt, forged))
            self._ask(self.own, "heartbeat as itself", Heartbeat("forger", trial.id, trial.attempt, 5, forged))
            if trial.worker:
                self._ask(self.own, "report in a worker's name", Report(trial.worker, trial.id, trial.attempt, forged))
            # a real worker's routing id (ROUTER_HANDOVER=0: ignored while the worker is connected).
            # Not for the poison trial: between its worker's death and the supervisor's
            # worker_lost, that id is free and its lease still held (see the report).
            if trial.worker and trial.id != POISON:
                with WorkerEndpoint(self.address, trial.worker) as borrowed:
                    self._ask(borrowed, "report under a borrowed id",
                              Report(trial.worker, trial.id, trial.attempt, forged))
        for worker in [*good, STALE]:  # only a worker's own supervisor may say it is lost
            self._ask(self.own, "worker_lost", WorkerLost(worker, FORGED_REASON))
        if good:  # claim the live host's id and workers as a second supervisor
            self._ask(self.own, "supervisor hello", Hello("forger", "good", os.getpid(), "cpu", "", tuple(good)))

    def close(self) -> None:
        self.own.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stale_worker_forger_poison_and_hang_in_one_run(tmp_path: Path) -> None:
    port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    store_a, store_b = tmp_path / "store-a", tmp_path / "store-b"
    ckpt_a, ckpt_b = tmp_path / "ckpt-a", tmp_path / "ckpt-b"
    procs: dict[str, Proc] = {}

    # --- run A, with a worker that will miss its end ------------------------------------------------
    procs["controller A"], address = start_controller(EXPERIMENT, store_a, bind, env=ENV_A, linger_s=3)
    procs["stale"] = stale = spawn([sys.executable, "-m", "pbt_actors.cli", "worker-process", str(EXPERIMENT),
                                    "--connect", address, "--worker-id", STALE, "--checkpoint-root", str(ckpt_a)],
                                   env=ENV_A)
    # alone at first, so it surely gets a trial; stopped mid-trial, it misses the rest of run A,
    # which a host finishes (re-running the stopped trial once its short lease expired)
    wait_until(lambda: any(t.worker == STALE for t in running(store_a)), 90, "the stale worker to run a trial of A")
    os.kill(stale.pid, signal.SIGSTOP)
    procs["host A"] = start_host(EXPERIMENT, address, ckpt_a, "a", 1, env=ENV_A)
    assert procs["controller A"].wait(120) == 0, procs["controller A"].output()[-4000:]
    assert finished(store_a), "run A did not finish without its stopped worker"
    assert procs["host A"].wait(60) == 0, procs["host A"].output()[-4000:]
    with reading(store_a) as s:
        assert s is not None
        run_a = s.get_meta(META_RUN_ID)

    # --- run B on the same port; the stale worker comes back -----------------------------------------
    procs["controller B"], address_b = start_controller(EXPERIMENT, store_b, bind, env=ENV_B, linger_s=10)
    assert address_b == address
    os.kill(stale.pid, signal.SIGCONT)
    procs["host B"] = host = start_host(EXPERIMENT, address, ckpt_b, "good", 2, env=ENV_B)
    wait_until(lambda: any((t.worker or "").startswith("good-w") for t in running(store_b)), 90,
               "run B's workers to run trials")
    forger = Forger(address)
    deadline = time.monotonic() + 180
    try:
        while procs["controller B"].poll() is None:  # forge until run B's controller is gone
            assert time.monotonic() < deadline, "run B does not end:\n" + procs["controller B"].output()[-6000:]
            if not finished(store_b):
                forger.round(running(store_b))
            time.sleep(0.2)  # the forger's pace, not a synchronisation
    finally:
        forger.close()
    out_b = procs["controller B"].output()
    assert procs["controller B"].wait(10) == 0, out_b[-6000:]
    assert finished(store_b), out_b[-6000:]
    assert host.wait(60) == 0, host.output()[-6000:]
    assert "GIVING UP" not in host.output(), host.output()[-6000:]
    assert stale.wait(60) == EXIT_WRONG_RUN, stale.output()[-4000:]

    # --- verify: clean ---------------------------------------------------------------------------------
    report = verify_cli(store_b, ckpt_b)
    assert report["ok"], report["problems"]

    trials = store_trials(store_b)
    by_id = {t.id: t for t in trials}
    with reading(store_b) as s:
        assert s is not None
        run_b = s.get_meta(META_RUN_ID)
    assert run_a and run_b and run_a != run_b

    # --- the forger: nothing it sent was taken ----------------------------------------------------------
    assert forger.rounds >= 3, forger.rounds
    kinds = {what for what, _, _ in forger.answers}
    assert {"report as itself", "heartbeat as itself", "report in a worker's name", "worker_lost",
            "supervisor hello"} <= kinds, kinds
    for what, trial_id, reply in forger.answers:
        if isinstance(reply, Ack) and what.startswith("report"):
            # the trial completed between the forger's look at the store and its report: a
            # report for a COMPLETED trial is acknowledged as a duplicate and changes nothing
            assert by_id[trial_id].status is TrialStatus.COMPLETED, (what, by_id[trial_id])
        elif isinstance(reply, Stop):  # a report or heartbeat for a trial that ended meanwhile
            assert by_id[trial_id].status.terminal and what != "worker_lost", (what, reply)
        elif what == "report under a borrowed id":
            assert reply is None or isinstance(reply, Error), (what, reply)
        else:
            assert isinstance(reply, Error), (what, reply)
    codes = {what: {r.code for w, _, r in forger.answers if w == what and isinstance(r, Error)} for what in kinds}
    assert codes["worker_lost"] == {"not_owner"}, codes
    assert codes["supervisor hello"] == {"host_taken"}, codes
    assert codes["report in a worker's name"] == {"not_leaseholder"}, codes
    for trial in trials:
        assert FORGED_REASON not in (trial.error or ""), trial
        assert all(FORGED_REASON not in str(h) for h in trial.history), trial
        assert (trial.final or {}).get("Q") != FORGED_Q, trial
        assert all(m.metrics.get("Q") != FORGED_Q for m in trial.measurements), trial
        assert trial.worker is None or trial.worker.startswith("good-w"), trial  # never "forger", never stale

    # --- the best result is a genuine one --------------------------------------------------------------
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    assert completed
    assert all(t.final is not None and t.checkpoint is not None for t in completed)
    best = max(completed, key=lambda t: (t.final or {})["Q"])
    best_q, best_ckpt = (best.final or {})["Q"], best.checkpoint
    assert best_ckpt is not None
    assert -0.42 - 1e-9 <= best_q < Q_MAX, best
    state = load_checkpoint(ckpt_b, best_ckpt)  # verified by its sha256 first
    t0, t1 = state["theta"]
    assert best_q == pytest.approx(Q_MAX - (t0 * t0 + t1 * t1)), (best, state)
    assert state["steps"] == best.end_step, (best, state)

    # --- the poison configuration and the hung trial: failed trials, not a dead host ------------------
    poison, hung = by_id[POISON], by_id[HANG]
    assert poison.status is TrialStatus.FAILED, poison
    assert "lost: process exited with code -9" in (poison.error or ""), poison.error
    assert hung.status is TrialStatus.FAILED, hung
    assert "trial timeout" in (hung.error or ""), hung.error
    assert hung.losses == 0, hung
    assert [t.id for t in trials if t.status is not TrialStatus.COMPLETED] == [POISON, HANG], \
        [(t.id, t.status.value, t.error) for t in trials if t.status is not TrialStatus.COMPLETED]
    assert not any(t.status.active for t in trials)
    # each is replaced by a fresh trial of its generation (the run does not shrink)
    assert {POISON, HANG} <= {t.origin.replaces for t in trials}, [(t.id, t.origin) for t in trials]
    # the host counted neither against itself: no restart budget spent on them, nothing given up
    assert "timed out (counted against the trial, not the host)" in host.output(), host.output()[-6000:]
    assert "which killed this worker before" in host.output(), host.output()[-6000:]

    # --- the stale worker: refused, and it touched nothing of run B --------------------------------------
    assert "wrong_run" in stale.output() or "refuses" in stale.output(), stale.output()[-4000:]
    assert all(STALE not in str(t.worker) and all(STALE not in str(h) for h in t.history) for t in trials)
    with LmdbTrialStore(store_a, readonly=True) as s:
        assert any(t.worker == STALE or any(STALE in str(h) for h in t.history) for t in s.iter_trials())
    b_files = {p for p in ckpt_b.rglob("*.ckpt")}
    referenced = {(ckpt_b / t.checkpoint.uri).resolve() for t in completed if t.checkpoint is not None}
    assert {p.resolve() for p in b_files} == referenced, sorted(map(str, b_files ^ referenced))

    summary = {what: sorted({type(r).__name__ + (f"({r.code})" if isinstance(r, Error) else "")
                             for w, _, r in forger.answers if w == what}) for what in kinds}
    print(f"forger: {forger.rounds} rounds, {len(forger.answers)} messages: {summary}")
    print(f"poison: deaths {poison.deaths} losses {poison.losses} attempt {poison.attempt}; "
          f"hung: attempt {hung.attempt}; replacements {[t.id for t in trials if t.origin.replaces]}")

    # --- no process outlives the test ---------------------------------------------------------------------
    for name, proc in procs.items():
        assert proc.poll() is not None, f"{name} still runs"
    workers = all_worker_pids(ckpt_a) | all_worker_pids(ckpt_b)
    assert workers
    wait_until(lambda: not any(pid_alive(pid) for pid in workers | {p.pid for p in procs.values()}), 30,
               "every worker process to be gone")
