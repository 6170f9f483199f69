"""Issue 4, item 2: hard preemption. SIGKILL a random worker process every 1-3 s (at least 10
kills) during a toy run; the run completes and ``pbt-actors verify`` finds every invariant
intact: each trial completed once, parents before children, checkpoints present with their
sha256, no orphaned RUNNING trial."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import env_with, finished, start, verify_cli, worker_pids
from tests.support.runs import TOY
from tests.support.waiting import wait_until

KILLS = 12
WORKERS = 3


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_a_random_worker_every_one_to_three_seconds(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    store = tmp_path / "run"
    ckpt = store / "checkpoints"
    # 50 generations of 4 trials of ~0.5 s on 3 workers: about 40 s of work, longer than the kills
    env = env_with(TOY_STEP_SLEEP_S=0.1, TOY_MAX_STEPS=250, TOY_LEASE_S=30)
    run = start("run", str(TOY), "--workers", str(WORKERS), "--devices", "cpu", "--store", str(store), "--json",
                env=env)
    wait_until(lambda: len(worker_pids(ckpt)) == WORKERS, 60, "the worker processes")
    kills: Counter[str] = Counter()
    log = []
    while sum(kills.values()) < KILLS:
        pause = rng.uniform(1.0, 3.0)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:  # the pause, watching the run meanwhile
            assert run.poll() is None, f"run ended after {sum(kills.values())} kills (seed {seed}):\n{run.output()}"
            time.sleep(0.05)
        assert not finished(store), f"run finished after only {sum(kills.values())} kills (seed {seed})"
        alive = worker_pids(ckpt)
        if not alive:
            continue  # every slot is restarting right now: wait for the next beat
        # random among the least-killed live workers: balanced, so that no slot exceeds the
        # supervisor's restart intensity (5 in 60 s) and gives up
        fewest = min(kills[w] for w in alive)
        victim = rng.choice(sorted(w for w in alive if kills[w] == fewest))
        os.kill(alive[victim], signal.SIGKILL)
        kills[victim] += 1
        log.append((round(pause, 2), victim))
    assert run.wait(300) == 0, f"seed {seed}, kills {log}:\n{run.output()}"
    assert "GIVING UP" not in run.output()

    report = verify_cli(store, ckpt)
    assert report["ok"], (seed, report["problems"])
    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
        # By design a lost worker costs its trial an attempt (an OOM kill looks just like a
        # preemption), so a trial that three kills hit in a row is FAILED and replaced, which
        # verify accepts. Anything else must have completed, warm-started from its parent's file.
        failed = [t for t in everything if t.status is not TrialStatus.COMPLETED]
        for trial in failed:
            assert trial.status is TrialStatus.FAILED and trial.attempt == 3, trial
            assert "lost: process exited with code -9" in (trial.error or ""), trial.error
            assert any(t.origin.replaces == trial.id for t in everything), trial.id
        for trial in everything:
            if trial.status is TrialStatus.COMPLETED:
                assert trial.checkpoint is not None
                state = load_checkpoint(ckpt, trial.checkpoint)
                assert state["trial"] == trial.id
                parent = s.checkpoint(trial.parent_id) if trial.parent_id is not None else None
                assert state["parent_sha256"] == (parent.sha256 if parent else None), trial.id
    assert report["checkpoints_checked"] == len(everything) - len(failed)
    # most kills land mid-trial: those trials were re-run (and the killed attempt is on record)
    retried = [t for t in everything if t.attempt > 1]
    assert len(retried) >= 3, (seed, log)
    assert all(t.history and t.history[0][0] == 1 for t in retried)
