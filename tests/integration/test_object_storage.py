"""Issue 11: multi-host runs with checkpoints in object storage, no shared folder.

A real S3-compatible server (moto's standalone server, its own process on loopback), the real
CLI (``pbt-actors controller`` and two ``pbt-actors worker`` hosts with ``--checkpoint-root
s3://bucket/prefix``), each host with its own local cache folder and nothing else shared.
Proved here: the run completes with ``pbt-actors verify`` clean, every child warm-started
from its parent's object, and a replay starts from an object in the bucket; a worker SIGKILLed
in the middle of a multipart upload leaves no object that anything references (the upload
never completed, so S3 shows none) and its trial is retried; an object damaged in the bucket
is caught by the sha256 check before loading.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbt_actors.model.errors import CheckpointError
from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.lineage import resolve_trial, schedule
from pbt_actors.tools.replay import replay
from tests.faults.harness import running, start, start_controller, start_host, verify_cli, worker_pids
from tests.support.runs import REPO, assert_complete_lineage
from tests.support.s3_server import S3Server, serving_bucket
from tests.support.waiting import wait_until

pytest.importorskip("s3fs")
EXPERIMENT = REPO / "tests" / "integration" / "experiments" / "object_store_toy.py"
BUCKET = "pbt-runs"
MiB = 2**20


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with serving_bucket(BUCKET) as server:
        yield server


def host_env(s3: S3Server, cache: Path, **extra: object) -> dict[str, str]:
    """A worker host's environment: the server's endpoint and credentials, its own cache."""
    return {**s3.env, "PBT_ACTORS_CACHE_DIR": str(cache), "PBT_ACTORS_UPLOAD_PART_BYTES": str(5 * MiB),
            **{k: str(v) for k, v in extra.items()}}


def objects(s3: S3Server, prefix: str) -> list[str]:
    """The keys the server itself lists under ``prefix`` (not our code's view)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return [o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", [])]


def open_uploads(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/")
    return [u["Key"] for u in listing.get("Uploads", [])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_hosts_share_nothing_but_the_bucket_and_the_run_verifies(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"multi-{uuid.uuid4().hex[:8]}"
    root, store = f"s3://{BUCKET}/{prefix}", tmp_path / "store"
    controller, endpoint = start_controller(EXPERIMENT, store, env=s3.env)
    hosts = [start_host(EXPERIMENT, endpoint, root, name, 2,  # type: ignore[arg-type]
                        env=host_env(s3, tmp_path / f"cache-{name}", OBJ_STEP_SLEEP_S=0.02))
             for name in ("alpha", "beta")]
    for host in hosts:
        assert host.wait(240) == 0, host.output()
    assert controller.wait(60) == 0, controller.output()

    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(tmp_path / "cache-checker"))  # downloads, no shared cache
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, root)  # type: ignore[arg-type]
        trials = list(s.iter_trials())
        workers = {t.worker.split("-")[0] for t in trials if t.worker}
        assert workers == {"alpha", "beta"}, workers  # both hosts trained, so children crossed hosts
        referenced = {t.checkpoint.uri for t in trials if t.checkpoint is not None}
    assert referenced <= set(objects(s3, prefix))
    assert all(uri.rsplit("-", 1)[1].removesuffix(".ckpt") in {t.checkpoint.sha256[:16] for t in trials
                                                              if t.checkpoint} for uri in referenced)
    assert not (tmp_path / "store" / "checkpoints").exists()  # nothing went to a local folder
    report = verify_cli(store, root)  # type: ignore[arg-type]
    assert report["ok"] and report["checkpoints_checked"] == len(trials), report
    # replay of the best trial's last segments, starting from its parent's object in the bucket
    with LmdbTrialStore(store, readonly=True) as s:
        sched = schedule(s, resolve_trial(s, "best"))
    _, train = load_experiment_file(str(EXPERIMENT))
    last = sched.segments[-1]
    assert last.start_step > 0
    result = replay(sched, train, checkpoint_root=tmp_path / "replay", from_step=last.start_step,
                    source_checkpoint_root=root)
    assert result.load_state()["theta"] == load_checkpoint(root, last.checkpoint)["theta"]
    # host state stays host-local with a URL root: `status` on alpha's machine (its cache folder) sees alpha
    status = start("status", "--store", str(store), "--checkpoint-root", root, "--json",
                   env={"PBT_ACTORS_CACHE_DIR": str(tmp_path / "cache-alpha")})
    assert status.wait(60) == 0, status.output()
    hosts = json.loads(status.output().strip().splitlines()[-1])["hosts"]
    assert [h["host"] for h in hosts] == ["alpha"] and hosts[0]["stopped"], hosts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_killed_mid_upload_leaves_nothing_referenced_and_its_trial_is_retried(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    root, store, cache = f"s3://{BUCKET}/{prefix}", tmp_path / "store", tmp_path / "cache-host"
    controller, endpoint = start_controller(EXPERIMENT, store, env=s3.env)
    host = start_host(EXPERIMENT, endpoint, root, "host", 2,  # type: ignore[arg-type]
                      env=host_env(s3, cache, OBJ_PAD_TRIAL=1, OBJ_PAD_MB=256))
    # the server's own view: trial 1's first attempt has begun a multipart upload
    key = wait_until(lambda: [k for k in open_uploads(s3, prefix) if "trial-000001/a1-" in k], 120,
                     "trial 1's multipart upload to begin")[0]
    leased = [t for t in running(store) if t.id == 1 and t.lease is not None]
    assert leased, "trial 1 should still be running while its checkpoint uploads"
    worker = leased[0].lease.worker  # type: ignore[union-attr]
    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(cache))  # that host's state files
    def pid_of_worker() -> int | None:  # slot ids ("host-w0") prefix the per-process worker ids
        pids = worker_pids(root)  # type: ignore[arg-type]
        return next((pid for slot, pid in pids.items() if worker == slot or worker.startswith(f"{slot}-")), None)

    pid = wait_until(pid_of_worker, 30, f"the pid of {worker}")
    assert not [k for k in objects(s3, prefix) if "trial-000001/a1-" in k]  # not finished yet
    os.kill(pid, signal.SIGKILL)
    assert host.wait(240) == 0, host.output()
    assert controller.wait(60) == 0, controller.output()

    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(tmp_path / "cache-checker"))
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, root)  # type: ignore[arg-type]
        first = s.get_trial(1)
        assert first.status is TrialStatus.COMPLETED and first.completed_attempt is not None
        assert first.completed_attempt > 1, first.history  # retried after the death
        referenced = {t.checkpoint.uri for t in s.iter_trials() if t.checkpoint is not None}
    stored = objects(s3, prefix)
    assert not [k for k in stored if "trial-000001/a1-" in k], stored  # the killed upload left no object
    assert key.removeprefix(f"{prefix}/") not in referenced
    assert referenced <= set(stored)
    assert verify_cli(store, root)["ok"]  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_object_damaged_in_the_bucket_is_caught_by_its_sha256_before_loading(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"damage-{uuid.uuid4().hex[:8]}"
    root, store = f"s3://{BUCKET}/{prefix}", tmp_path / "store"
    run = start("run", str(EXPERIMENT), "--store", str(store), "--checkpoint-root", root, "--devices", "cpu",
                "--workers", "2", "--json", env=host_env(s3, tmp_path / "cache-run", OBJ_MAX_STEPS=10))
    assert run.wait(240) == 0, run.output()
    with LmdbTrialStore(store, readonly=True) as s:
        best = max((t for t in s.iter_trials() if t.checkpoint is not None), key=lambda t: t.id)
    assert best.checkpoint is not None
    client = s3.client()
    good = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{best.checkpoint.uri}")["Body"].read()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{best.checkpoint.uri}",
                      Body=good[:10] + bytes([good[10] ^ 0x55]) + good[11:])  # same size, one byte off

    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(tmp_path / "cache-checker"))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(root, best.checkpoint)
    report = verify_cli(store, root)  # type: ignore[arg-type]
    assert not report["ok"]
    assert any(f"trial {best.id}" in p and "sha256" in p for p in report["problems"]), report
    # the run's own host still holds a good cached copy; verify must not trust it
    monkeypatch.setenv("PBT_ACTORS_CACHE_DIR", str(tmp_path / "cache-run"))
    report = verify_cli(store, root)  # type: ignore[arg-type]
    assert not report["ok"], report
