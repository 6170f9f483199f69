"""Issue 4, item 5: crash loops. A worker whose experiment fails at import, or whose ``train``
kills its process at every start, is restarted with exponential backoff until the host
supervisor's intensity is exceeded, then it gives up loudly; the controller and the other
workers are unaffected; the supervisor's state file (which ``pbt-actors status`` shows) says
why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.host.host_state import describe_host_states, host_state_path, read_host_states
from pbt_actors.runtime.host.host_supervisor import HostSupervisor
from pbt_actors.runtime.host.launch import load_experiment_file, worker_specs
from pbt_actors.runtime.host.restart_rules import Backoff, Intensity
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import (
    EXPERIMENTS,
    env_with,
    finished,
    start,
    start_controller,
    start_host,
    verify_cli,
    worker_pids,
)
from tests.support.waiting import wait_until

CRASH_LOOP = EXPERIMENTS / "crash_loop.py"
EXIT_CODE = {"import": 1, "train": 70}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("crash_at", ["import", "train"])
def test_a_crash_looping_worker_backs_off_gives_up_loudly_and_harms_no_one(tmp_path: Path, crash_at: str) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    # ~30 s of work for the two good workers: longer than the bad one's ~6 starts and 6.2 s of
    # backoff, even on a loaded machine, so that it gives up while the run goes on
    env = env_with(FAULT_STEP_SLEEP_S=0.1, FAULT_MAX_STEPS=140)
    controller, endpoint = start_controller(CRASH_LOOP, store, env=env)
    good = start_host(CRASH_LOOP, endpoint, ckpt, "good", 2, env=env)
    good_pids = wait_until(lambda: (p := {w: pid for w, pid in worker_pids(ckpt).items() if w.startswith("good-")})
                           and len(p) == 2 and p, 60, "the good workers")
    bad = start_host(CRASH_LOOP, endpoint, ckpt, "bad", 1, env={**env, "CRASH_AT": crash_at})

    assert bad.wait(180) == 1, bad.output()  # gave up: the host exits non-zero...
    assert not finished(store), "the run should go on after the bad worker gave up"
    out = bad.output()
    code = EXIT_CODE[crash_at]
    limit = Intensity()  # the host supervisor's defaults
    reason = (f"{limit.max_restarts} restarts within {limit.within_s:g}s (limit {limit.max_restarts}); "
              f"last exit code {code}")
    assert f"GIVING UP on worker bad-w0: {reason}" in out  # ...loudly, in the log
    assert f"worker bad-w0 gave up: {reason}" in out  # and in its final words
    delays = [float(d) for d in re.findall(rf"worker bad-w0 exited \(code {code}\); restart in ([\d.]+)s", out)]
    assert delays == pytest.approx([Backoff().delay(n) for n in range(limit.max_restarts)])  # 0.2 s, doubling
    if crash_at == "import":
        assert "cannot be imported (simulated broken install)" in out  # the cause is in the host's output
    # the good workers were never restarted while the bad one looped
    still = {w: pid for w, pid in worker_pids(ckpt).items() if w.startswith("good-")}
    assert all(good_pids[w] == pid for w, pid in still.items())

    assert good.wait(180) == 0, good.output()
    assert "restart in" not in good.output()
    assert controller.wait(60) == 0, controller.output()
    assert finished(store)
    assert verify_cli(store, ckpt)["ok"]
    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
    by_bad = [t for t in everything if any(h[1].startswith("bad-w0-") for h in t.history)]  # <slot>-<6 hex>
    if crash_at == "import":  # it never got as far as asking for work
        assert not by_bad
        assert all(t.status is TrialStatus.COMPLETED for t in everything)
    else:  # each crash handed its trial back at once (worker_lost), to be run by a good worker
        assert by_bad
        for trial in by_bad:
            assert re.search(r"worker bad-w0-[0-9a-f]{6} lost: process exited with code 70", trial.error or "")
            assert trial.status in (TrialStatus.COMPLETED, TrialStatus.FAILED)
        assert sum(t.status is TrialStatus.COMPLETED for t in everything) >= len(everything) - 2


@pytest.mark.timeout(120)
def test_the_host_state_file_says_which_worker_gave_up_and_why(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv("CRASH_AT", "import")
    specs = worker_specs(str(CRASH_LOOP), "tcp://127.0.0.1:9", str(ckpt), "cpu", 1, prefix="flaky")
    path = host_state_path(ckpt, "flaky")
    supervisor = HostSupervisor(specs, intensity=Intensity(2, 60), backoff=Backoff(0.1), state_path=path,
                                host="flaky")
    try:
        waiting = wait_until(lambda: (s := read_host_states(ckpt)) and s[0]["children"][0]["state"] == "waiting"
                             and s[0], 60, "the state file to show a restart pending")
        assert waiting["children"][0]["reason"].startswith("restarting in")
        assert supervisor.wait(60)
        final = json.loads(path.read_text())
    finally:
        supervisor.stop()
    child = final["children"][0]
    assert final["host"] == "flaky" and not final["stopped"]
    assert child["id"] == "flaky-w0" and child["state"] == "gave_up"
    assert child["starts"] == 3 and child["last_exit"] == 1
    assert child["reason"] == "2 restarts within 60s (limit 2); last exit code 1"
    lines = describe_host_states(read_host_states(ckpt))
    assert any("flaky-w0  gave_up" in line and "2 restarts within 60s" in line for line in lines), lines
    assert read_host_states(ckpt)[0]["stopped"]  # stopping the supervisor is recorded too


@pytest.mark.timeout(120)
def test_pbt_actors_status_shows_why_a_worker_gave_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "store" / "checkpoints"
    experiment, _ = load_experiment_file(CRASH_LOOP)
    with LmdbTrialStore(store) as s:
        ControllerCore(s, experiment)
    monkeypatch.setenv("CRASH_AT", "import")
    specs = worker_specs(str(CRASH_LOOP), "tcp://127.0.0.1:9", str(ckpt), "cpu", 1, prefix="flaky")
    supervisor = HostSupervisor(specs, intensity=Intensity(1, 60), backoff=Backoff(0.1),
                                state_path=host_state_path(ckpt, "flaky"), host="flaky")
    try:
        assert supervisor.wait(60)
    finally:
        supervisor.stop()
    status = start("status", "--store", str(store), "--json")
    assert status.wait(60) == 0
    hosts = json.loads(status.output())["hosts"]
    assert hosts[0]["children"][0]["state"] == "gave_up"
    status = start("status", "--store", str(store))
    assert status.wait(60) == 0
    assert "flaky-w0  gave_up" in status.output() and "1 restarts within 60s" in status.output()



@pytest.mark.timeout(300)
def test_random_worker_deaths_over_different_trials_never_make_the_host_give_up(tmp_path: Path) -> None:
    """Issue 20, item 6: a fifth of all attempts SIGKILL their worker (out of memory on some
    configurations, say). Each death counted against the host unless its trial had killed that
    worker before, so both slots gave up ("5 restarts within 60 s") and ``run`` exited 1 with
    trials pending. A death in a trial of a process that had finished others is that trial's."""
    store = tmp_path / "store"
    env = env_with(FAULT_MAX_STEPS=150, FAULT_MAX_ATTEMPTS=10, DEATH_RATE=0.2)
    run = start("run", str(EXPERIMENTS / "random_deaths.py"), "--workers", "2", "--devices", "cpu",
                "--store", str(store), env=env)
    assert run.wait(240) == 0, run.output()[-4000:]
    out = run.output()
    assert "GIVING UP" not in out and "gave up" not in out, out[-4000:]
    assert "not counted against this host" in out  # the deaths happened, and were the trials'
    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
    deaths = sum(t.deaths for t in everything)
    assert deaths > 2 * Intensity().max_restarts, deaths  # more than both slots' limits together
    assert len({t.id for t in everything if t.deaths}) > Intensity().max_restarts  # over different trials
    assert all(t.status is TrialStatus.COMPLETED for t in everything), [(t.id, t.status, t.error) for t in everything]
    assert verify_cli(store, store / "checkpoints")["ok"]
