"""Issue 19: a SIGTERMed host's command trials resume from the step they reached.

Two real worker hosts serve one real controller; the trials are a plain script
(``experiments/command_steps.py``) run as command trials. The whole process group of one host
is SIGTERMed mid-trial (as SLURM does). Its worker hears it, SIGTERMs its program's own
process group; the program saves its state directory after the step it is in and prints
``pbt: checkpoint step=N``; the worker stores that directory as the resume checkpoint and
reports the attempt as preempted. The other host's retry gets that directory as
``PBT_PARENT_DIR`` and trains only the steps left: none lost, none repeated.
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_SIGTERM
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint_dir
from pbt_actors.runtime.worker.trial_runner import PREEMPTED
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import (
    EXPERIMENTS,
    Proc,
    env_with,
    pid_alive,
    read_trace,
    running,
    start,
    start_controller,
    verify_cli,
)
from tests.support.waiting import wait_until

EXPERIMENT = EXPERIMENTS / "command_preemptible.py"


def _host(endpoint: str, ckpt: Path, host_id: str, env: dict[str, str]) -> Proc:
    return start("worker", str(EXPERIMENT), "--connect", endpoint, "--devices", "cpu", "--workers", "1",
                 "--checkpoint-root", str(ckpt), "--host-id", host_id, "--stop-grace", "10", env=env)


def _mid_trial_on(host_id: str, store: Path, trace: Path) -> Trial | None:
    done = read_trace(trace)
    for trial in running(store):
        steps = len(done.get((trial.id, trial.attempt), []))
        if (trial.attempt == 1 and trial.lease is not None and trial.lease.worker.startswith(f"{host_id}-")
                and 3 <= steps <= trial.steps - 4):
            return trial
    return None


def _program_pids(trace: Path) -> list[int]:
    return [int(p.stem) for p in trace.glob("*.trace")]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sigtermed_hosts_command_trials_resume_where_they_stopped(tmp_path: Path) -> None:
    store, ckpt, trace = tmp_path / "store", tmp_path / "ckpt", tmp_path / "trace"
    env = env_with(FAULT_STEP_SLEEP_S=0.15, FAULT_STEPS_PER_TRIAL=10, FAULT_MAX_STEPS=20, FAULT_POPULATION=2,
                   FAULT_TRACE_DIR=trace, FAULT_LEASE_S=4)
    controller, endpoint = start_controller(EXPERIMENT, store, env=env, linger_s=10)
    victim_host = _host(endpoint, ckpt, "A", env)
    other_host = _host(endpoint, ckpt, "B", env)

    victim = wait_until(lambda: _mid_trial_on("A", store, trace), 120, "a trial 3 steps into its first attempt on A")
    assert victim.lease is not None
    os.killpg(victim_host.pid, signal.SIGTERM)  # the host's group; the program has its own
    assert victim_host.wait(30) == EXIT_SIGTERM, victim_host.output()
    assert other_host.wait(200) == 0, other_host.output()
    assert controller.wait(60) == 0, controller.output()
    assert not any(pid_alive(p) for p in _program_pids(trace))  # no program outlived its worker
    report = verify_cli(store, ckpt)
    assert report["ok"], report

    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
        trial = s.get_trial(victim.id)
    assert everything and all(t.status is TrialStatus.COMPLETED for t in everything)
    steps = read_trace(trace)
    first = steps[(trial.id, 1)]
    reached = trial.start_step + len(first)
    assert first == list(range(trial.start_step, reached)) and reached < trial.end_step  # stopped mid-trial
    assert trial.completed_attempt == 2 and trial.error == PREEMPTED, trial
    assert trial.resume is not None and trial.resume.step == reached  # a directory saved at the step reached
    assert steps[(trial.id, 2)] == list(range(reached, trial.end_step))  # the retry trained only the rest
    finished_by: dict[int, list[int]] = defaultdict(list)
    for (trial_id, attempt), done in steps.items():
        if done and done[-1] == next(t for t in everything if t.id == trial_id).end_step - 1:
            finished_by[trial_id].append(attempt)
    for t in everything:
        assert finished_by[t.id] == [t.completed_attempt], (t.id, finished_by[t.id], t.completed_attempt)
        assert t.checkpoint is not None
        state = json.loads((load_checkpoint_dir(ckpt, t.checkpoint) / "state.json").read_text())
        assert state["steps"] == t.end_step, t.id  # every step trained exactly once
