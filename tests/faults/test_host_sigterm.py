"""Issue 14, item 2: a cluster manager preempts a worker host the way SLURM and Kubernetes do,
SIGTERM to every process of the host's group (supervisor, zygote, workers), and SIGKILL after
a grace period if anything is left.

Two real worker hosts serve one real controller. One host's group is SIGTERMed mid-trial. Its
workers set ``ctx.should_stop``, save a resume checkpoint and report ``fail(preempted, resume)``;
its supervisor restarts none of them and exits promptly with ``EXIT_SIGTERM`` (143). The other
host re-runs the rest of the trial from the resume checkpoint; the run completes; no trial is
completed twice; the steps lost are none. With a SIGKILL of the group right after the SIGTERM
(a grace period too short for the trial) nothing is lost either: the trial's lease expires and
it is re-run from its last recorded checkpoint.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_SIGTERM
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.runtime.worker.trial_runner import PREEMPTED
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import (
    EXPERIMENTS,
    env_with,
    first_attempt_mid_trial,
    pid_alive,
    read_trace,
    start_controller,
    start_host,
    verify_cli,
    worker_pids,
)
from tests.support.waiting import wait_until

PREEMPTIBLE = EXPERIMENTS / "preemptible.py"
STOP_PROMPTLY_S = 20.0
"""The preempted host's exit after the SIGTERM: a step (0.15 s), the checkpoint, one round trip,
the worker's exit and the supervisor's polls; generous for a loaded 2-core machine."""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("whole_group", "then_sigkill"), [(True, False), (False, False), (True, True)],
                         ids=["group-sigterm-then-clean-exit", "host-only-sigterm", "group-sigterm-then-sigkill"])
def test_sigterm_to_a_hosts_group_hands_its_trials_to_the_other_host(tmp_path: Path, whole_group: bool,
                                                                    then_sigkill: bool) -> None:
    """``whole_group``: SLURM, or tini -g as PID 1; else only the host (a plain PID 1 in a pod):
    its supervisor passes the SIGTERM on to its workers."""
    store, ckpt, trace = tmp_path / "store", tmp_path / "ckpt", tmp_path / "trace"
    env = env_with(FAULT_STEP_SLEEP_S=0.15, FAULT_STEPS_PER_TRIAL=10, FAULT_MAX_STEPS=30, FAULT_POPULATION=2,
                   FAULT_TRACE_DIR=trace, FAULT_LEASE_S=4, PREEMPT_SAVE_ON_STOP=1, PREEMPT_CKPT_EVERY=0)
    controller, endpoint = start_controller(PREEMPTIBLE, store, env=env, linger_s=10)
    victim_host = start_host(PREEMPTIBLE, endpoint, ckpt, "A", 1, env=env, stop_grace_s=10)
    other_host = start_host(PREEMPTIBLE, endpoint, ckpt, "B", 1, env=env, stop_grace_s=10)

    victim = wait_until(lambda: first_attempt_mid_trial("A", store, trace), 120,
                        "a trial 3 steps into its first attempt on A")
    assert victim.lease is not None
    pids = wait_until(lambda: [p for slot, p in worker_pids(ckpt).items() if slot.startswith("A-")], 10, "A's worker")
    if whole_group:
        os.killpg(victim_host.pid, signal.SIGTERM)  # the whole group, as SLURM (and tini -g in a pod) do
    else:
        os.kill(victim_host.pid, signal.SIGTERM)
    sigterm_at = time.monotonic()
    if then_sigkill:  # a grace period too short for anything: the group dies mid-trial
        os.killpg(victim_host.pid, signal.SIGKILL)
        victim_host.wait(30)
    else:
        assert victim_host.wait(STOP_PROMPTLY_S) == EXIT_SIGTERM, victim_host.output()
        assert time.monotonic() - sigterm_at < STOP_PROMPTLY_S
        assert "restart in" not in victim_host.output(), victim_host.output()  # no worker restarted
    wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "A's workers gone")

    assert other_host.wait(200) == 0, other_host.output()
    assert controller.wait(60) == 0, controller.output()
    report = verify_cli(store, ckpt)
    assert report["ok"], report

    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
        trial = s.get_trial(victim.id)
    assert everything and all(t.status is TrialStatus.COMPLETED for t in everything)
    assert trial.completed_attempt is not None and trial.completed_attempt >= 2, trial
    steps = read_trace(trace)
    first = steps[(trial.id, 1)]
    reached = trial.start_step + len(first)
    assert first == list(range(trial.start_step, reached)) and reached < trial.end_step  # stopped mid-trial
    if not then_sigkill:
        # handed back at once with a resume checkpoint at the step it reached: nothing lost
        assert trial.completed_attempt == 2 and trial.error == PREEMPTED, trial
        assert trial.history[0][:2] == (1, victim.lease.worker)
        assert trial.resume is not None and trial.resume.step == reached
        assert steps[(trial.id, 2)] == list(range(reached, trial.end_step))
    # every trial's steps ran to the end in exactly one attempt (completed once) ...
    finished_by: dict[int, list[int]] = defaultdict(list)
    for (trial_id, attempt), done in steps.items():
        if done and done[-1] == next(t for t in everything if t.id == trial_id).end_step - 1:
            finished_by[trial_id].append(attempt)
    for t in everything:
        assert finished_by[t.id] == [t.completed_attempt], (t.id, finished_by[t.id], t.completed_attempt)
        # ... and its model state saw every step exactly once
        assert t.checkpoint is not None
        assert load_checkpoint(ckpt, t.checkpoint)["steps"] == t.end_step, t.id
