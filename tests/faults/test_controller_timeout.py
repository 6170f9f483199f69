"""Issue 14, item 3: ``pbt-actors worker --controller-timeout``. A host whose controller is gone
for good exits with ``EXIT_NO_CONTROLLER`` (69) and one clear line, within the timeout (counted
from the last reply) plus a little; its workers are not restarted. A controller restarted on the
same store and port within the timeout is found again and the run completes.

Real processes throughout: controller and host are CLI processes, the controller is SIGKILLed
with its process group.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.runtime.worker.worker_client import ControllerGone, WorkerClient, unresolvable_host
from pbt_actors.runtime.worker.worker_process import WorkerProcessConfig
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import (
    EXPERIMENTS,
    Proc,
    env_with,
    free_port,
    pid_alive,
    running,
    start,
    start_controller,
    trials,
    worker_pids,
)
from tests.support.runs import TOY, assert_complete_lineage
from tests.support.waiting import wait_until

ENV = env_with(TOY_STEP_SLEEP_S=0.05, TOY_MAX_STEPS=40, TOY_LEASE_S=60)
SLACK_S = 8.0
"""Beyond the timeout: the last round's end, the worker process's exit, the supervisor's poll
(50 ms) and the host's (0.5 s), on a loaded 2-core machine."""


def _completed(store: Path) -> int:
    return sum(t.status is TrialStatus.COMPLETED for t in trials(store))


def test_the_exit_code_is_one_number_in_the_runtime_and_the_cli() -> None:
    assert EXIT_NO_CONTROLLER == 69
    config = WorkerProcessConfig("exp.py", "tcp://127.0.0.1:1", "w", "/tmp", controller_timeout_s=2.5)
    assert WorkerProcessConfig.parse(config.argv()) == config  # what the zygote and a fresh process read


@pytest.mark.timeout(60)
def test_a_worker_that_never_hears_a_controller_gives_up_after_the_timeout(tmp_path: Path) -> None:
    _, train = load_experiment_file(TOY)
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nobody listens
    client = WorkerClient(endpoint, train, str(tmp_path), worker_id="alone", controller_timeout_s=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(ControllerGone, match=f"no controller at {endpoint} for 2 s"):
            client.hello()
        took = time.monotonic() - started
    finally:
        client.close()
    assert 1.9 <= took < 2.0 + 3.0, took  # (counted from the client's start, just before `started`)
    assert client.controller_gone.is_set()


@pytest.mark.timeout(60)
def test_a_controller_name_that_does_not_resolve_is_said_so(tmp_path: Path) -> None:
    """Issue 21, item 8: ZeroMQ retries an unresolvable name silently; the give-up says why
    (``.invalid`` never resolves, RFC 6761), and an address or a name that resolves is not blamed."""
    _, train = load_experiment_file(TOY)
    endpoint = f"tcp://pbt-no-such-controller.invalid:{free_port()}"
    assert "'pbt-no-such-controller.invalid' does not resolve" in (unresolvable_host(endpoint) or "")
    for fine in (f"tcp://127.0.0.1:{free_port()}", "tcp://localhost:5555", "ipc:///tmp/x", "tcp://[::1]:5555"):
        assert unresolvable_host(fine) is None, fine
    client = WorkerClient(endpoint, train, str(tmp_path), worker_id="alone", controller_timeout_s=1.0)
    try:
        with pytest.raises(ControllerGone, match=r"for 1 s; giving up: the controller's host name "
                                                 r"'pbt-no-such-controller.invalid' does not resolve"):
            client.hello()
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_host_whose_controller_is_gone_for_good_exits_with_its_code(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller, endpoint = start_controller(TOY, store, env=ENV)
    host = _host(endpoint, ckpt, timeout_s=3)
    wait_until(lambda: _completed(store) >= 3 and running(store), 120, "3 completed trials and one running")
    pids = wait_until(lambda: worker_pids(ckpt) if len(worker_pids(ckpt)) == 2 else None, 30, "both workers")
    controller.kill_group()  # SIGKILL, for good
    killed_at = time.monotonic()
    code = host.wait(3 + SLACK_S + 30)
    took = time.monotonic() - killed_at
    assert code == EXIT_NO_CONTROLLER, host.output()
    assert took <= 3 + SLACK_S, (took, host.output())
    print(f"host exit {took:.2f}s after the controller was killed (timeout 3 s)")
    assert f"no controller at {endpoint} for 3 s; giving up" in host.output()
    assert "restart in" not in host.output()  # final: no worker was restarted
    assert not any(pid_alive(pid) for pid in pids.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_controller_restarted_within_the_timeout_is_found_again(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    bind = f"tcp://127.0.0.1:{free_port()}"
    timeout_s = 20
    controller, endpoint = start_controller(TOY, store, bind, env=ENV)
    host = _host(endpoint, ckpt, timeout_s=timeout_s)
    try:
        wait_until(lambda: _completed(store) >= 5 and running(store), 120, "5 completed trials and one running")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_completed(store)} completed\n{host.output()[-3000:]}\n"
                             f"{controller.output()[-3000:]}") from None
    controller.kill_group()
    killed_at = time.monotonic()
    # the workers' last reply came before the kill: the restart must be within the timeout of it
    restarted, _ = start_controller(TOY, store, bind, env=ENV)
    down_s = time.monotonic() - killed_at
    assert down_s < timeout_s - 5, f"the controller took {down_s:.1f}s to restart: the test proves nothing"
    assert host.wait(200) == 0, host.output()
    assert restarted.wait(60) == 0, restarted.output()
    assert "giving up" not in host.output()
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, ckpt)  # nothing lost, every trial completed exactly once


def _host(endpoint: str, ckpt: Path, *, timeout_s: float) -> Proc:
    """``pbt-actors worker`` with 2 CPU workers and ``--controller-timeout timeout_s``."""
    return start("worker", str(TOY), "--connect", endpoint, "--devices", "cpu", "--workers", "2",
                 "--checkpoint-root", str(ckpt), "--host-id", "h", "--controller-timeout", str(timeout_s), env=ENV)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_long_trial_is_stopped_when_its_controller_is_gone(tmp_path: Path) -> None:
    """Mid-trial nothing is sent but heartbeats: the ticker notices the silence, sets
    ``ctx.should_stop``, and the host exits long before the trial would have ended."""
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    env = env_with(FAULT_STEP_SLEEP_S=0.5, FAULT_STEPS_PER_TRIAL=60, FAULT_MAX_STEPS=60, FAULT_POPULATION=2,
                   FAULT_LEASE_S=60)  # a trial of 30 s
    experiment = EXPERIMENTS / "preemptible.py"
    controller, endpoint = start_controller(experiment, store, env=env)
    host = start("worker", str(experiment), "--connect", endpoint, "--devices", "cpu", "--workers", "1",
                 "--checkpoint-root", str(ckpt), "--host-id", "h", "--controller-timeout", "3", env=env)
    wait_until(lambda: running(store), 120, "a running trial")
    controller.kill_group()
    killed_at = time.monotonic()
    assert host.wait(60) == EXIT_NO_CONTROLLER, host.output()
    took = time.monotonic() - killed_at
    assert took <= 3 + SLACK_S < 30, (took, host.output())  # the 30 s trial was cut short
    assert "giving up" in host.output()


@pytest.mark.timeout(30)
def test_a_pause_the_controller_asked_for_is_not_its_silence(tmp_path: Path) -> None:
    """``wait(retry_after_s)`` longer than the timeout: the worker pauses, then counts again."""
    _, train = load_experiment_file(TOY)
    client = WorkerClient(f"tcp://127.0.0.1:{free_port()}", train, str(tmp_path), worker_id="w",
                          controller_timeout_s=0.5)
    try:
        client._pause(1.0)  # as run_one does after a `wait` reply
        assert not client.controller_gone.is_set()  # the ticker (every second) saw no silence
        left = client._controller_time_left()
        assert left is not None and 0 < left <= 0.5
    finally:
        client.close()
