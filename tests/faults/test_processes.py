"""Hardening: processes that must not outlive the process that supervises them.

``kill -9`` of ``pbt-actors run`` (or of a host's ``pbt-actors worker``) used to leave its
worker processes running, re-parented to init, for as long as their trials lasted. Workers
now watch a lifeline pipe whose write end only their supervisor holds (and the zygote dies
with its parent), so everything is gone within seconds.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    EXPERIMENTS,
    env_with,
    free_port,
    pid_alive,
    start,
    start_controller,
    start_host,
    worker_pids,
)
from tests.support.waiting import wait_until

SLOW = EXPERIMENTS / "preemptible.py"
SLOW_ENV = env_with(FAULT_STEP_SLEEP_S=1.0, FAULT_MAX_STEPS=400, FAULT_STEPS_PER_TRIAL=200, PREEMPT_SAVE_ON_STOP=0)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def all_gone(pids: list[int]) -> bool:
    return not [pid for pid in pids if pid_alive(pid)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "no-zygote"])
def test_sigkill_of_run_takes_its_workers_and_zygote_with_it(tmp_path: Path, zygote: bool) -> None:
    store = tmp_path / "run"
    flags = [] if zygote else ["--no-zygote"]
    run = start("run", str(SLOW), "--workers", "2", "--devices", "cpu", "--store", str(store), "--quiet", *flags,
                env=SLOW_ENV)
    workers = wait_until(lambda: (p := worker_pids(store / "checkpoints")) and len(p) == 2 and p, 90,
                         "two running workers")
    helpers = children_of(run.pid)  # the zygote (when there is one) and the fresh workers
    everything = sorted({*workers.values(), *helpers})
    if zygote:
        assert set(helpers) - set(workers.values()), "no zygote among the run's children"
    os.kill(run.pid, signal.SIGKILL)  # the run process only, not its group
    run.wait(10)
    wait_until(lambda: all_gone(everything), 10, f"the orphans {everything} to exit")


@pytest.mark.timeout(180)
def test_sigkill_of_a_host_supervisor_takes_its_workers_with_it(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller, endpoint = start_controller(SLOW, store, f"tcp://127.0.0.1:{free_port()}", env=SLOW_ENV)
    host = start_host(SLOW, endpoint, ckpt, "h1", 2, env=SLOW_ENV)
    workers = wait_until(lambda: (p := worker_pids(ckpt)) and len(p) == 2 and p, 90, "two running workers")
    everything = sorted({*workers.values(), *children_of(host.pid)})
    os.kill(host.pid, signal.SIGKILL)
    host.wait(10)
    wait_until(lambda: all_gone(everything), 10, f"the orphans {everything} to exit")
    assert controller.poll() is None  # the controller is not affected


@pytest.mark.timeout(180)
def test_status_shows_a_sigkilled_hosts_workers_as_lost_not_running(tmp_path: Path) -> None:
    from pbt_actors.runtime.host.host_state import HOST_LOST_AFTER, HOST_STATE_REFRESH_S

    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller, endpoint = start_controller(SLOW, store, f"tcp://127.0.0.1:{free_port()}", env=SLOW_ENV)
    host = start_host(SLOW, endpoint, ckpt, "doomed", 2, env=SLOW_ENV)
    wait_until(lambda: len(worker_pids(ckpt)) == 2, 90, "two running workers")

    def status() -> dict[str, Any]:
        proc = start("status", "--store", str(store), "--checkpoint-root", str(ckpt), "--json")
        assert proc.wait(60) == 0, proc.output()
        answer: dict[str, Any] = json.loads(proc.output())
        return answer

    # a live host keeps its state fresh though nothing changed: wait for a heartbeat rewrite
    first = status()["hosts"][0]["updated_at"]
    wait_until(lambda: status()["hosts"][0]["updated_at"] > first, HOST_STATE_REFRESH_S * 3 + 15,
               "a heartbeat rewrite of the host state", poll_s=0.5)
    (alive,) = status()["hosts"]
    assert alive["lost"] is False and {c["state"] for c in alive["children"]} == {"running"}
    host.kill_group()  # supervisor and workers, no last word
    (lost,) = wait_until(lambda: [h for h in status()["hosts"] if h["lost"]], HOST_LOST_AFTER * HOST_STATE_REFRESH_S
                         + 15, "the host to be called lost", poll_s=1)
    assert {c["state"] for c in lost["children"]} == {"lost"}
    text = start("status", "--store", str(store), "--checkpoint-root", str(ckpt))
    assert text.wait(60) == 0
    assert "host doomed" in text.output() and "LOST: no heartbeat" in text.output(), text.output()
    assert "  running  " not in text.output()
    assert controller.poll() is None
