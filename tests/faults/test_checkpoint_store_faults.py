"""Issue 20, item 4: a checkpoint store that cannot be written is an infrastructure fault, not
a training failure. A bucket that never existed and a local root that cannot be written stop
``run`` / ``controller`` / ``worker`` before the first trial; a bucket deleted mid-run stops
the run at the first checkpoint that cannot be written. Each time: one line, exit 74, and no
trial charged (the run used to fail every trial, then say ``finished`` and exit 0). Against a
real S3 server on loopback (``tests/support/s3_server.py``), driven from the CLI."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_CHECKPOINT_STORE
from pbt_actors.model.records import TrialStatus
from tests.faults.harness import EXPERIMENTS, Proc, env_with, finished, spawn, start, trials
from tests.faults.test_storage_faults import _read_only_folder
from tests.support.s3_server import S3Server, serving_bucket
from tests.support.waiting import wait_until

pytest.importorskip("s3fs", reason="object-storage tests need the s3 extra: pip install .[s3] (.ci/install does)")
EXPERIMENT = EXPERIMENTS / "flaky.py"  # without FLAKY_* it trains and saves like the toy


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with serving_bucket("pbt-present") as server:
        yield server


def s3_env(s3: S3Server, tmp_path: Path, **extra: object) -> dict[str, str]:
    return {**s3.env, "PBT_ACTORS_CACHE_DIR": str(tmp_path / "cache"), **env_with(**extra)}


def one_line(proc: Proc, *needles: str) -> str:
    """The process's one ``pbt-actors: `` line, holding every needle, and no traceback."""
    out = proc.output()
    lines = [line for line in out.splitlines() if line.startswith("pbt-actors: ")]
    assert len(lines) == 1, out[-4000:]
    assert all(n in lines[0] for n in needles), lines[0]
    assert "run the same command again to resume" in lines[0], lines[0]
    assert "Traceback" not in out, out[-4000:]
    return lines[0]


def nothing_charged(store: Path) -> None:
    """No trial FAILED or COMPLETED, none leased twice for the store's fault, the run not over."""
    everything = trials(store)
    assert not [t for t in everything if t.status in (TrialStatus.FAILED, TrialStatus.COMPLETED)], everything
    assert not finished(store)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["run", "controller", "worker"])
def test_a_bucket_that_never_existed_stops_before_the_first_trial(s3: S3Server, tmp_path: Path, command: str) -> None:
    root, store = "s3://pbt-never-made/run", tmp_path / "store"
    if command == "run":
        proc = start("run", str(EXPERIMENT), "--workers", "2", "--devices", "cpu", "--store", str(store),
                     "--checkpoint-root", root, env=s3_env(s3, tmp_path))
    elif command == "controller":
        proc = start("controller", str(EXPERIMENT), "--store", str(store), "--bind", "tcp://127.0.0.1:0",
                     "--checkpoint-root", root, env=s3_env(s3, tmp_path))
    else:
        proc = start("worker", str(EXPERIMENT), "--connect", "tcp://127.0.0.1:9", "--devices", "cpu",
                     "--workers", "1", "--checkpoint-root", root, env=s3_env(s3, tmp_path))
    assert proc.wait(120) == EXIT_CHECKPOINT_STORE, proc.output()[-4000:]
    one_line(proc, "the checkpoint root s3://pbt-never-made/run cannot be written",
             "The specified bucket does not exist")
    nothing_charged(store)
    assert not [t for t in trials(store) if t.attempt > 1]  # nothing was even leased


@pytest.mark.timeout(180)
def test_a_local_root_that_cannot_be_written_stops_before_the_first_trial(tmp_path: Path) -> None:
    root, store = tmp_path / "readonly", tmp_path / "store"
    prefix = _read_only_folder(root)
    argv = [*prefix, sys.executable, "-m", "pbt_actors.cli", "run", str(EXPERIMENT), "--workers", "2", "--devices",
            "cpu", "--store", str(store), "--checkpoint-root", str(root)]
    proc = spawn(argv)
    assert proc.wait(120) == EXIT_CHECKPOINT_STORE, proc.output()[-4000:]
    one_line(proc, f"the checkpoint root {root} cannot be written", "Read-only file system" if prefix
             else "Permission denied")
    nothing_charged(store)


@pytest.mark.timeout(300)
def test_a_bucket_deleted_mid_run_stops_the_run_without_charging_a_trial(s3: S3Server, tmp_path: Path) -> None:
    bucket, store = s3.make_bucket("pbt-doomed"), tmp_path / "store"
    env = s3_env(s3, tmp_path, FAULT_STEP_SLEEP_S=0.05, FAULT_MAX_STEPS=400, FAULT_MAX_ATTEMPTS=1)
    argv = ("run", str(EXPERIMENT), "--workers", "2", "--devices", "cpu", "--store", str(store),
            "--checkpoint-root", f"s3://{bucket}/run")
    run = start(*argv, env=env)
    wait_until(lambda: sum(t.status is TrialStatus.COMPLETED for t in trials(store)) >= 4, 120,
               "four completed trials")
    s3.remove_bucket(bucket)  # emptied again while the workers still write, until the delete goes through

    assert run.wait(180) == EXIT_CHECKPOINT_STORE, run.output()[-4000:]
    one_line(run, "could not write its checkpoint", "The specified bucket does not exist")
    everything = trials(store)
    assert not [t for t in everything if t.status is TrialStatus.FAILED], \
        [(t.id, t.error) for t in everything if t.status is TrialStatus.FAILED]  # max_attempts 1: none burnt
    hit = [t for t in everything if "CheckpointStoreFault" in (t.error or "")]
    assert hit and all(t.status is TrialStatus.PENDING for t in hit), [(t.id, t.status) for t in hit]
    assert not finished(store)

    again = start(*argv, env=env)  # still no bucket: the rerun stops before its first trial
    assert again.wait(120) == EXIT_CHECKPOINT_STORE, again.output()[-4000:]
    one_line(again, f"the checkpoint root s3://{bucket}/run cannot be written")
    assert trials(store) == everything
