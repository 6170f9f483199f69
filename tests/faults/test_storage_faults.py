"""Issue 4, item 10: storage faults. The LMDB map grows under load while other processes read
the store; a store folder that cannot be written is refused with a clear error and nothing
half-written; a checkpoint disk that fills up fails the checkpoint writes with a clear error,
leaves no partial file behind, and the trials are retried once there is room again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_CHECKPOINT_STORE
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import EXPERIMENTS, env_with, finished, start, start_host, trials, verify_cli
from tests.support.runs import REPO, TOY, assert_complete_lineage

DISK_FULL = EXPERIMENTS / "disk_full.py"
TINY_MAP = 64 * 1024


@pytest.mark.timeout(300)
def test_the_lmdb_map_grows_under_load_while_other_processes_read(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    experiment, _ = load_experiment_file(TOY)
    experiment = replace(experiment, max_steps=150)  # some 120 trials, hammered by four workers

    def open_store() -> LmdbTrialStore:
        return LmdbTrialStore(store, map_size=TINY_MAP)

    handle = Controller.start(experiment, open_store, "tcp://127.0.0.1:0")
    try:
        # trials of ~0.1 s: long enough for a few `status` reads even with workers forked in milliseconds
        host = start_host(TOY, handle.endpoint, ckpt, "load", 4, env=env_with(TOY_STEP_SLEEP_S=0.02))
        reads = 0
        while not handle.status().finished:  # `status` in other processes all along
            status = start("status", "--store", str(store), "--json")
            assert status.wait(60) == 0, status.output()
            assert json.loads(status.output())["trials"] >= 4
            reads += 1
            assert reads < 400, "the run did not finish"
        assert host.wait(120) == 0, host.output()
    finally:
        handle.stop()
    assert not [t.name for t in threading.enumerate() if t.name == "pbt-controller-bridge"]
    with LmdbTrialStore(store, readonly=True) as s:
        assert s.map_size >= 8 * TINY_MAP, s.map_size  # grown (doubling) at least three times
        assert_complete_lineage(s, ckpt)
        assert s.count() >= 100
    assert reads >= 3
    assert verify_cli(store, ckpt)["ok"]


def _read_only_folder(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` cannot be written, even by root."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(folder)]
    if shutil.which("unshare") is None or subprocess.run([*probe, "true"], capture_output=True,
                                                         check=False, timeout=30).returncode != 0:
        pytest.skip("running as root without the right to make a read-only bind mount")
    return probe


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["read-only folder", "path through a file"])
def test_a_store_folder_that_cannot_be_written_is_refused_clearly(tmp_path: Path, case: str) -> None:
    if case == "read-only folder":
        store = tmp_path / "readonly"
        prefix = _read_only_folder(store)
        expected = f"the store folder {store} is not writable"
    else:
        (tmp_path / "a-file").write_text("not a folder")
        store, prefix = tmp_path / "a-file" / "store", []
        expected = f"cannot create the store folder {store}"
    argv = [*prefix, sys.executable, "-m", "pbt_actors.cli", "controller", str(TOY), "--store", str(store),
            "--bind", "tcp://127.0.0.1:0"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=90, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("pbt-actors: ")  # one clear line, not a crash
    if store.is_dir():
        assert not list(store.iterdir())  # nothing half-written


@pytest.mark.timeout(240)
def test_a_full_checkpoint_disk_stops_the_run_uncharged_and_a_rerun_resumes(tmp_path: Path) -> None:
    """Issue 20, item 4: a full checkpoint disk used to fail every trial, and the run then said
    ``finished`` and exited 0 with no lineage. It is the store's fault, not the trials': the
    run stops with one line and exit 74, no trial is charged, and the same command resumes."""
    store, flag = tmp_path / "run", tmp_path / "disk-is-full"
    ckpt = store / "checkpoints"
    flag.touch()
    env = env_with(DISK_FULL_FLAG=flag, FAULT_STEP_SLEEP_S=0.02, FAULT_MAX_ATTEMPTS=1, FAULT_MAX_STEPS=20)
    argv = ("run", str(DISK_FULL), "--workers", "2", "--devices", "cpu", "--store", str(store))
    full = start(*argv, env=env)
    assert full.wait(120) == EXIT_CHECKPOINT_STORE, full.output()[-4000:]
    out = full.output()
    lines = [line for line in out.splitlines() if line.startswith("pbt-actors: ")]
    assert len(lines) == 1, out[-4000:]
    assert "could not write its checkpoint: cannot write checkpoint" in lines[0], lines
    assert "File too large" in lines[0] and "run the same command again to resume" in lines[0], lines  # the OS's words
    assert "Traceback" not in out
    everything = trials(store)
    assert not [t for t in everything if t.status in (TrialStatus.FAILED, TrialStatus.COMPLETED)], everything
    hit = [t for t in everything if "CheckpointStoreFault: cannot write checkpoint" in (t.error or "")]
    assert hit and all(t.status is TrialStatus.PENDING for t in hit), everything  # re-queued, not burnt
    assert not finished(store)
    # no temp file and no torso
    assert not [p for p in ckpt.rglob("*") if p.is_file() and ".pbt-hosts" not in p.parts]

    flag.unlink()  # space is freed: the same command resumes and finishes
    resumed = start(*argv, "--json", env=env)
    assert resumed.wait(180) == 0, resumed.output()[-4000:]
    with LmdbTrialStore(store, readonly=True) as s:
        after = list(s.iter_trials())
        # max_attempts 1, yet nothing FAILED: the fault was not charged
        assert all(t.status is TrialStatus.COMPLETED for t in after), [(t.id, t.status, t.error) for t in after]
        assert all(s.get_trial(t.id).completed_attempt == t.attempt for t in hit)  # the re-queued attempt
    assert verify_cli(store, ckpt)["ok"]


STORE_FILE_LIMIT = 512 * 1024


def _store_disk_full() -> None:
    """``preexec_fn``: no file of this process (or its children) may grow past
    ``STORE_FILE_LIMIT``; LMDB's short ``write`` of a commit then fails with EIO, as on a full
    disk (the worker logs and the toy's checkpoints stay far below it)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (STORE_FILE_LIMIT, resource.RLIM_INFINITY))


@pytest.mark.timeout(300)
def test_a_full_store_disk_stops_the_run_cleanly_and_a_rerun_resumes(tmp_path: Path) -> None:
    # hardening item 17: the run used to print 56 tracebacks ("mdb_txn_commit: No space left
    # on device", then "Input/output error") and hang with no progress until interrupted
    from pbt_actors.common.exit_codes import EXIT_STORE_FULL

    store = tmp_path / "run"
    env = env_with(MISBEHAVE="", FAULT_POPULATION=4, FAULT_MAX_STEPS=1000)
    argv = ("run", str(EXPERIMENTS / "misbehaving.py"), "--workers", "2", "--devices", "cpu", "--store", str(store),
            "--json")
    full = start(*argv, env=env, preexec_fn=_store_disk_full)
    code = full.wait(120)
    out = full.output()
    assert code == EXIT_STORE_FULL, out[-6000:]
    lines = [line for line in out.splitlines() if line.startswith("pbt-actors: ")]
    assert len(lines) == 1 and lines[0].startswith("pbt-actors: the store's disk is full ("), out[-6000:]
    # a write(2) that stops at the limit: LMDB says EIO for a short write, EFBIG for a refused one
    assert f"{store} failed: mdb_txn_commit: " in lines[0], lines
    assert "Input/output error" in lines[0] or "File too large" in lines[0], lines
    assert lines[0].endswith("); free space and run again to resume"), lines
    assert "Traceback" not in out, out[-6000:]
    assert (store / "data.mdb").stat().st_size <= STORE_FILE_LIMIT
    with LmdbTrialStore(store, readonly=True) as s:
        before = s.count(TrialStatus.COMPLETED)
    assert before > 10  # it got somewhere before the disk filled
    assert verify_cli(store, store / "checkpoints")["ok"]  # consistent as it stands

    resumed = start(*argv, env=env)  # space again: the same store resumes and finishes
    assert resumed.wait(240) == 0, resumed.output()[-6000:]
    summary = json.loads(resumed.output().strip().splitlines()[-1])
    assert summary["finished"] and summary["by_status"]["completed"] > before, summary
    assert verify_cli(store, store / "checkpoints")["ok"]
