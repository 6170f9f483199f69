"""The zygote fork server (pbt_actors/runtime/host/zygote.py): real forks, real signals, no mocks.

The workers run ``experiments/zygote_probe.py``, whose module code reports the process's
environment, argv and already-imported modules in its log and then exits or waits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.common.exit_codes import EXIT_UNKNOWN
from pbt_actors.model.errors import ConfigError, PbtError, ZygoteError
from pbt_actors.runtime.host.launch import worker_specs
from pbt_actors.runtime.host.zygote import ForkedWorker, Zygote
from pbt_actors.runtime.worker.worker_process import WorkerProcessConfig
from tests.support.runs import REPO, cli
from tests.support.waiting import wait_until

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
PROBE = EXPERIMENTS / "zygote_probe.py"
TOY_QUADRATIC = REPO / "examples" / "toy_quadratic.py"


def probe_config(root: Path, worker_id: str = "probe") -> WorkerProcessConfig:
    return WorkerProcessConfig(str(PROBE), "tcp://127.0.0.1:9", worker_id, str(root))


def probe_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def probe_report(log: Path) -> dict[str, Any]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("PROBE {")]
    assert len(lines) == 1, log.read_text()
    report: dict[str, Any] = json.loads(lines[0][len("PROBE "):])
    return report


def wait_ready(log: Path) -> None:
    wait_until(lambda: log.exists() and "PROBE ready" in log.read_text(), 30, f"'PROBE ready' in {log}")


def gone(pid: int) -> bool:
    """No such process, or only a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    # forking needs a single-threaded process: earlier tests' threads must have ended
    wait_until(lambda: threading.active_count() == 1, 10,
               f"single-threaded test process (threads: {[t.name for t in threading.enumerate()]})")
    assert "json.tool" not in sys.modules  # so that the child seeing it proves the preload
    z = Zygote.start(preload=["json.tool"])
    try:
        yield z
    finally:
        z.close()


def test_the_worker_process_arguments_round_trip_and_bad_ones_are_config_errors() -> None:
    config = WorkerProcessConfig("e.py", "tcp://h:1", "w0", "/ckpt", curve_server_key="s.key", curve_secret="c.key")
    assert WorkerProcessConfig.parse(config.argv()) == config
    assert WorkerProcessConfig.parse(probe_config(Path("/r")).argv()) == probe_config(Path("/r"))
    with pytest.raises(ConfigError, match="--worker-id"):
        WorkerProcessConfig.parse(["e.py", "--connect", "tcp://h:1", "--checkpoint-root", "/ckpt"])
    assert issubclass(ZygoteError, PbtError)


@pytest.mark.timeout(60)
def test_a_forked_worker_sees_exactly_its_env_argv_and_preload_and_writes_its_log(zygote: Zygote,
                                                                                  tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("earlier line\n")  # appended to, not truncated
    env = probe_env(PROBE_MODE="exit", PROBE_CODE="0", ZYGOTE_TEST="yes")
    config = probe_config(tmp_path)
    child = zygote.spawn(config, env, log)
    assert isinstance(child, ForkedWorker)
    assert child.wait(30) == 0
    report = probe_report(log)
    assert report["env"] == env
    assert report["pid"] == child.pid and child.pid != zygote.pid
    assert report["argv"] == ["worker-process", *config.argv()]  # what a fresh worker's sys.argv holds
    assert report["modules"]["json.tool"] is True
    assert log.read_text().startswith("earlier line\n")
    assert os.environ.get("ZYGOTE_TEST") is None  # the parent's environment is untouched


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", [0, 3])
def test_exit_codes_come_back_through_poll_and_wait(zygote: Zygote, tmp_path: Path, code: int) -> None:
    child = zygote.spawn(probe_config(tmp_path), probe_env(PROBE_CODE=str(code)), tmp_path / "w.log")
    assert wait_until(lambda: child.poll() is not None, 30, "the child's exit") is True
    assert child.poll() == code and child.returncode == code
    assert child.wait() == code and child.wait(0) == code


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("action", "on_term", "expected"), [
    ("kill", "", -signal.SIGKILL),
    ("terminate", "", -signal.SIGTERM),
    ("terminate", "7", 7),  # a child that handles SIGTERM exits with its own code
])
def test_signals_reach_the_child_and_its_returncode_says_how_it_ended(zygote: Zygote, tmp_path: Path,
                                                                     action: str, on_term: str,
                                                                     expected: int) -> None:
    log = tmp_path / "w.log"
    env = probe_env(PROBE_MODE="wait", **({"PROBE_ON_TERM": on_term} if on_term else {}))
    child = zygote.spawn(probe_config(tmp_path), env, log)
    wait_ready(log)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    getattr(child, action)()
    assert child.wait(30) == expected
    child.kill()  # after the exit: a no-op, not an error


@pytest.mark.timeout(60)
def test_workers_start_concurrently_from_several_threads(zygote: Zygote, tmp_path: Path) -> None:
    children: list[ForkedWorker] = []
    lock = threading.Lock()

    def spawn(i: int) -> None:
        child = zygote.spawn(probe_config(tmp_path), probe_env(PROBE_CODE=str(i)), tmp_path / f"w{i}.log")
        with lock:
            children.append(child)

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({c.pid for c in children}) == 6
    assert sorted(c.wait(30) for c in children) == list(range(6))


@pytest.mark.timeout(60)
def test_the_zygote_exits_when_its_parent_closes_it(zygote: Zygote, tmp_path: Path) -> None:
    zygote.close()
    with pytest.raises(ProcessLookupError):  # exited and reaped
        os.kill(zygote.pid, 0)
    with pytest.raises(ZygoteError):
        zygote.spawn(probe_config(tmp_path), probe_env(), None)
    zygote.close()  # twice: a no-op


@pytest.mark.timeout(60)
def test_the_zygote_exits_when_its_parent_dies() -> None:
    script = ("import signal\nfrom pbt_actors.runtime.host.zygote import Zygote\n"
              "z = Zygote.start(preload=[])\nprint(z.pid, flush=True)\nwhile True:\n    signal.pause()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert parent.stdout is not None
        zygote_pid = int(parent.stdout.readline())
        assert not gone(zygote_pid)
        parent.kill()
        parent.wait(10)
        wait_until(lambda: gone(zygote_pid), 10, "the orphaned zygote's exit")
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.timeout(90)
def test_a_killed_zygote_fails_spawn_orphans_report_and_launch_falls_back_to_popen(zygote: Zygote,
                                                                                   tmp_path: Path) -> None:
    log = tmp_path / "orphan.log"
    orphan = zygote.spawn(probe_config(tmp_path), probe_env(PROBE_MODE="wait"), log)
    wait_ready(log)
    os.kill(zygote.pid, signal.SIGKILL)
    with pytest.raises(ZygoteError):
        zygote.spawn(probe_config(tmp_path), probe_env(), None)

    # its child lives on; once gone, its exit is reported by the documented convention
    assert orphan.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        orphan.wait(timeout=0.2)
    orphan.kill()
    assert orphan.wait(30) == EXIT_UNKNOWN == -signal.SIGKILL

    # the launcher's factory falls back to a fresh interpreter (`python -m pbt_actors.cli worker-process`)
    (spec,) = worker_specs(str(PROBE), "tcp://127.0.0.1:9", str(tmp_path), "cpu", 1, log_dir=str(tmp_path / "logs"),
                           zygote=zygote)
    process = spec.factory()
    try:
        assert isinstance(process, subprocess.Popen)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    (worker_log,) = (tmp_path / "logs").glob("*.log")
    report = probe_report(worker_log)
    assert report["modules"]["json.tool"] is False
    assert report["argv"] == ["worker-process", *probe_config(tmp_path, spec.id).argv()]


@pytest.mark.timeout(60)
def test_launch_forks_workers_from_the_zygote(zygote: Zygote, tmp_path: Path) -> None:
    specs = worker_specs(str(PROBE), "tcp://127.0.0.1:9", str(tmp_path), "cpu", 2, log_dir=str(tmp_path / "logs"),
                         zygote=zygote, prefix="h")
    processes = [spec.factory() for spec in specs]
    assert all(isinstance(p, ForkedWorker) for p in processes)
    assert [p.wait(30) for p in processes] == [0, 0]
    for spec in specs:
        report = probe_report(tmp_path / "logs" / f"{spec.id}.log")
        assert report["modules"]["json.tool"] is True
        assert report["env"]["CUDA_VISIBLE_DEVICES"] == "" and report["env"]["OMP_NUM_THREADS"]
        assert report["argv"][report["argv"].index("--worker-id") + 1] == spec.id


# The CLI's situation in a fresh process: torch imported (by the experiment file), then the
# zygote with its default preload; one worker forked from it, one started fresh.
TORCH_SCRIPT = """
import sys
import torch
from pbt_actors.runtime.host.launch import worker_specs
from pbt_actors.runtime.host.zygote import Zygote
probe, root = sys.argv[1], sys.argv[2]
zygote = Zygote.start()
for name, source in (("forked", zygote), ("fresh", None)):
    (spec,) = worker_specs(probe, "tcp://127.0.0.1:9", root, "cpu", 1, prefix=name, log_dir=root, zygote=source)
    process = spec.factory()
    print(name, type(process).__name__, process.wait(120), flush=True)
zygote.close()
"""


@pytest.mark.timeout(180)
def test_a_forked_worker_starts_with_torch_and_torch_dynamo_already_imported(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, str(PROBE), str(tmp_path)], cwd=str(REPO),
                         capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("\n")[:2] == ["forked ForkedWorker 0", "fresh Popen 0"], out.stdout + out.stderr
    forked = probe_report(tmp_path / "forked-w0.log")["modules"]
    fresh = probe_report(tmp_path / "fresh-w0.log")["modules"]
    # imported before the experiment file's first line: inherited (torch) and preloaded (torch._dynamo)
    assert forked["torch"] and forked["torch._dynamo"] and forked["pbt_actors.runtime.worker.worker_client"], forked
    assert not fresh["torch"] and not fresh["torch._dynamo"] and fresh["pbt_actors.runtime.worker.worker_client"], fresh


@pytest.mark.timeout(30)
def test_start_refuses_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="a-bystander")
    thread.start()
    try:
        with pytest.raises(ZygoteError, match="a-bystander"):
            Zygote.start(preload=[])
    finally:
        release.set()
        thread.join()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flags", [[], ["--no-zygote"]], ids=["zygote", "no-zygote"])
def test_pbt_actors_run_completes_with_and_without_the_zygote(tmp_path: Path, flags: list[str]) -> None:
    store_dir = tmp_path / "run"
    proc = cli("run", str(TOY_QUADRATIC), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json",
               *flags)
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["finished"] and summary["best"] is not None
    assert "fresh process" not in out  # the zygote neither refused nor failed
    assert len(list((store_dir / "logs").glob("*.log"))) == 2  # one per worker slot


@pytest.mark.timeout(180)
def test_pbt_actors_run_falls_back_to_fresh_workers_when_the_experiment_starts_a_thread(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    proc = cli("run", str(EXPERIMENTS / "thread_at_import.py"), "--workers", "2", "--devices", "cpu",
               "--store", str(store_dir), "--json")
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    assert out.count("started-at-import") == 1 and "starting each worker as a fresh process" in out, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["finished"] and summary["best"] is not None
