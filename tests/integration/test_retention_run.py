"""Retention end to end: a real ``pbt-actors run`` (controller, worker processes, LMDB, files)
finishes with the checkpoint folder within its bound; ``gc --dry-run`` lists and deletes nothing,
``gc --force`` deletes; ``pin`` protects; the best trial replays from scratch after collection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.model.records import TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.verify import verify_store
from tests.support.runs import REPO, cli, drive_embedded_workers, kill_all_started

pytestmark = pytest.mark.timeout(180)

TOY = REPO / "examples" / "toy_quadratic.py"
KEEP_BEST = 3  # Retention's default


@pytest.fixture(autouse=True)
def _kill_started() -> Iterator[None]:
    yield
    kill_all_started()


def run_json(*args: str, timeout_s: float = 150) -> tuple[int, str]:
    proc = cli(*args)
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.ckpt")}


def test_a_run_with_retention_ends_within_its_bound_and_its_best_replays(tmp_path: Path) -> None:
    store_dir = tmp_path / "run"
    rc, out = run_json("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json")
    assert rc == 0, out
    summary = last_json(out)
    assert summary["finished"]
    root = store_dir / "checkpoints"
    with LmdbTrialStore(store_dir, readonly=True) as store:
        completed = store.count(TrialStatus.COMPLETED)
        held = {ref.uri for i in store.checkpoint_ids() if (ref := store.checkpoint(i)) is not None}
        report = verify_store(store, root, finished=True)
        best = summary["best"]["trial_id"]
        assert store.checkpoint(best) is not None  # the best is kept
    assert completed > 10 * KEEP_BEST
    # a finished run holds only its best (the bound with nothing active: keep_best + pins)
    assert files(root) == held and len(held) <= KEEP_BEST
    assert report.ok, report.problems
    assert report.checkpoints_collected == completed - len(held)

    rc, out = run_json("replay", "--store", str(store_dir), "best", "--experiment", str(TOY),
                       "--out", str(tmp_path / "replay"), "--json")
    assert rc == 0, out
    result = last_json(out)
    assert result["final"]["Q"] == pytest.approx(summary["best"]["final"]["Q"])

    rc, out = run_json("replay", "--store", str(store_dir), "best", "--experiment", str(TOY),
                       "--out", str(tmp_path / "sub"), "--from-step", "100")
    assert rc != 0 and "collected by retention" in out

    rc, out = run_json("lineage", "--store", str(store_dir), "best")
    assert rc == 0 and "collected" in out


def test_gc_dry_run_lists_then_gc_deletes_and_pins_are_kept(tmp_path: Path) -> None:
    experiment = tmp_path / "toy_keep_all.py"  # the same toy, run with retention off
    experiment.write_text(
        f"exec(open({str(TOY)!r}).read())\n"
        "from dataclasses import replace\n"
        "from pbt_actors import Retention\n"
        "experiment = replace(experiment, name='toy_keep_all', retention=Retention(enabled=False))\n")
    store_dir = tmp_path / "run"
    rc, out = run_json("run", str(experiment), "--workers", "2", "--devices", "cpu", "--store", str(store_dir),
                       "--json")
    assert rc == 0, out
    root = store_dir / "checkpoints"
    before = files(root)
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert len(before) == store.count(TrialStatus.COMPLETED) > 10  # retention off kept everything
    rc, out = run_json("gc", "--store", str(store_dir))
    assert rc != 0 and "--force" in out  # the run had retention off: gc asks to be sure

    rc, out = run_json("pin", "--store", str(store_dir), "7")
    assert rc == 0, out
    rc, out = run_json("gc", "--store", str(store_dir), "--dry-run", "--json")
    assert rc == 0, out
    dry = last_json(out)
    assert files(root) == before  # a dry run deletes nothing
    listed = {item["uri"] for item in dry["delete"]}
    assert len(listed) == len(before) - KEEP_BEST - 1 and listed < before
    assert dry["keep"]["7"] == "pinned"
    rc, out = run_json("gc", "--store", str(store_dir), "--dry-run")
    assert rc == 0 and out.count("would delete trial") == len(listed)

    rc, out = run_json("gc", "--store", str(store_dir), "--force", "--json")
    assert rc == 0, out
    assert files(root) == before - listed
    with LmdbTrialStore(store_dir, readonly=True) as store:
        assert store.checkpoint(7) is not None
        report = verify_store(store, root, finished=True)
    assert report.ok, report.problems
    rc, out = run_json("pin", "--store", str(store_dir), str(min(item["trial"] for item in dry["delete"])))
    assert rc != 0 and "already collected" in out


def test_an_embedded_controller_collects_in_the_background_as_trials_complete(tmp_path: Path) -> None:
    """The collector wakes on completions (no timer here: an hour's interval), deletes while the
    run goes on, and the final pass at ``stop`` leaves only the best."""
    from pbt_actors.runtime.controller.checkpoint_collector import local_deleter
    from pbt_actors.runtime.controller.controller_actor import Controller
    from pbt_actors.runtime.host.launch import load_experiment_file
    from tests.support.waiting import wait_until

    experiment, train = load_experiment_file(TOY)
    root = tmp_path / "ckpt"
    handle = Controller.start(experiment, tmp_path / "store", "tcp://127.0.0.1:0",
                              checkpoint_delete=local_deleter(root), retention_interval_s=3600)
    collector = handle.collector
    assert collector is not None
    clients: list[Any] = []
    try:
        clients = drive_embedded_workers(handle, train, root)
        wait_until(lambda: collector.deleted > 0, 30, "a background collection before stop")
    finally:
        for client in clients:
            client.close()
        handle.stop()
    with LmdbTrialStore(tmp_path / "store", readonly=True) as store:
        held = {ref.uri for i in store.checkpoint_ids() if (ref := store.checkpoint(i)) is not None}
        report = verify_store(store, root, finished=True)
    assert files(root) == held and len(held) <= KEEP_BEST
    assert report.ok, report.problems


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_deleter_of_an_object_store_root_deletes_the_object_idempotently() -> None:
    """Retention against a real S3-compatible server (moto's, on loopback): the controller's
    deleter for an ``s3://`` root is the storage backend's ``CheckpointStore.delete``."""
    import uuid

    from pbt_actors.runtime.checkpoint_payloads import save_checkpoint
    from pbt_actors.runtime.controller.checkpoint_collector import checkpoint_deleter
    from tests.support.s3_server import pointed_at, running_s3_server

    with running_s3_server() as server, pointed_at(server):
        server.make_bucket("retention")
        root = f"s3://retention/{uuid.uuid4().hex[:8]}"
        keep = save_checkpoint(root, "t1/keep.ckpt", {"x": 1}, 5)
        gone = save_checkpoint(root, "t2/gone.ckpt", {"x": 2}, 5)
        delete = checkpoint_deleter(root)
        delete(gone.uri)
        delete(gone.uri)  # idempotent: deleting what is gone is no error
        prefix = root.split("/", 3)[3]
        listed = server.client().list_objects_v2(Bucket="retention", Prefix=f"{prefix}/").get("Contents", [])
        assert [o["Key"][len(prefix) + 1:] for o in listed] == [keep.uri]
