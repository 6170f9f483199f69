"""Directory checkpoints on a local root: the manifest's safety checks, what a folder may hold,
the trial API (``ctx.save_checkpoint_dir`` / ``ctx.load_checkpoint_dir``), verification, and
deletion by retention's deleter. The store contract over S3 is in
``tests/contract/test_checkpoint_store.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError
from pbt_actors.model.records import CheckpointRef, directory_files_folder, is_directory_checkpoint
from pbt_actors.runtime.checkpoint_payloads import (
    load_checkpoint_dir,
    save_checkpoint,
    save_checkpoint_dir,
    verify_file,
)
from pbt_actors.runtime.controller.checkpoint_collector import checkpoint_deleter, local_deleter
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.storage.dir_manifest import (
    FORMAT,
    ManifestFile,
    decode_manifest,
    encode_manifest,
    scan_directory,
)

SHA = "ab" * 32


def make_tree(base: Path) -> Path:
    (base / "sub" / "deeper").mkdir(parents=True)
    (base / "config.json").write_text('{"lr": 0.1}')
    (base / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 12)
    (base / "sub" / "deeper" / "empty").write_bytes(b"")
    (base / ".gitattributes").write_text("*.bin binary\n")
    return base


def tree_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ctx(root: Path, trial_id: int = 1, parent: CheckpointRef | None = None) -> TrialContext:
    return TrialContext(trial_id=trial_id, attempt=1, generation=0, hparams={}, start_step=0, end_step=5,
                        checkpoint_root=str(root), experiment="exp", parent_checkpoint=parent)


def manifest_doc(rows: list[dict[str, object]]) -> bytes:
    return json.dumps({"format": FORMAT, "files": rows}).encode()


# --- the manifest ------------------------------------------------------------------------------

def test_manifest_round_trip_is_canonical() -> None:
    files = [ManifestFile("b/x", 3, SHA), ManifestFile("a", 0, "cd" * 32)]
    data = encode_manifest(files)
    assert data == encode_manifest(list(reversed(files)))  # same files, same bytes, same keys
    assert decode_manifest(data, "m") == sorted(files, key=lambda f: f.path)


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../../b", "a//b", "./a", "a/.", "", "a\\b", "a\x00b"])
def test_manifest_with_an_unsafe_path_is_refused(path: str) -> None:
    with pytest.raises(CheckpointError, match=r"clean relative path|non-empty"):
        decode_manifest(manifest_doc([{"path": path, "bytes": 1, "sha256": SHA}]), "m")


@pytest.mark.parametrize("rows, message", [
    ([{"path": "a", "bytes": 1, "sha256": SHA}, {"path": "a", "bytes": 1, "sha256": SHA}], "twice"),
    ([{"path": "a", "bytes": 1, "sha256": SHA}, {"path": "a/b", "bytes": 1, "sha256": SHA}], "file and a folder"),
    ([{"path": "a", "bytes": -1, "sha256": SHA}], "size"),
    ([{"path": "a", "bytes": True, "sha256": SHA}], "size"),
    ([{"path": "a", "bytes": 1, "sha256": "XYZ"}], "sha256"),
    (["a"], "not an object"),
])
def test_manifest_with_bad_entries_is_refused(rows: list[object], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        decode_manifest(json.dumps({"format": FORMAT, "files": rows}).encode(), "m")


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[]", b'{"format": "other", "files": []}', b"{"])
def test_what_is_not_a_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(CheckpointError, match="not a directory checkpoint manifest"):
        decode_manifest(data, "m")


# --- what a folder may hold ----------------------------------------------------------------------

def test_a_symlink_out_of_the_directory_is_refused_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    src = make_tree(tmp_path / "src")
    (src / "sub" / "leak").symlink_to(secret)
    with pytest.raises(CheckpointError, match=r"sub/leak is a symbolic link to .*outside the directory"):
        ctx(tmp_path / "root").save_checkpoint_dir(src)
    assert not list((tmp_path / "root").rglob("*.manifest"))  # nothing referenced


def test_a_relative_symlink_escaping_by_dotdot_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (tmp_path / "outside").write_text("x")
    (src / "sub" / "up").symlink_to("../../outside")
    with pytest.raises(CheckpointError, match="outside the directory"):
        scan_directory(src)


def test_a_symlinked_folder_and_a_fifo_are_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "again").symlink_to(src / "sub")
    with pytest.raises(CheckpointError, match="symbolic link to a folder"):
        scan_directory(src)
    (src / "again").unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(CheckpointError, match="not a regular file"):
        scan_directory(src)


def test_a_symlink_inside_the_directory_is_stored_as_its_file(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "alias.json").symlink_to("config.json")
    ref = ctx(tmp_path / "root").save_checkpoint_dir(src)
    loaded = load_checkpoint_dir(tmp_path / "root", ref)
    assert not (loaded / "alias.json").is_symlink()
    assert (loaded / "alias.json").read_text() == '{"lr": 0.1}'


def test_a_file_name_that_is_not_utf8_is_refused_clearly(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / os.fsdecode(b"latin-\xe9.bin")).write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        scan_directory(src)


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        scan_directory(tmp_path / "file")
    with pytest.raises(CheckpointError, match="not a folder"):
        scan_directory(tmp_path / "missing")


# --- the trial API -------------------------------------------------------------------------------

def test_save_then_load_gives_the_same_tree_read_only(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    parent = ctx(tmp_path / "root")
    ref = parent.save_checkpoint_dir(src, step=4)
    assert parent.saved == ref and ref.step == 4 and is_directory_checkpoint(ref)
    assert ref.uri == f"exp/trial-000001/a1-s4-{ref.sha256[:16]}.manifest"
    (src / "config.json").write_text("changed after saving")  # the checkpoint is a snapshot
    child = ctx(tmp_path / "root", 2, ref)
    loaded = child.load_checkpoint_dir()
    assert loaded is not None and loaded.name == Path(directory_files_folder(ref.uri)).name
    expected = tree_of(make_tree(tmp_path / "again")) | {"sub/weights.bin": (src / "sub" / "weights.bin").read_bytes()}
    assert tree_of(loaded) == expected
    assert (loaded / "config.json").stat().st_mode & 0o222 == 0  # read-only by convention, enforced
    assert ctx(tmp_path / "root").load_checkpoint_dir() is None  # from scratch


def test_saving_the_same_folder_twice_is_a_no_op(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    first = save_checkpoint_dir(tmp_path / "root", "exp/trial-000001/a1-s5", src, 5)
    second = save_checkpoint_dir(tmp_path / "root", "exp/trial-000001/a1-s5", src, 5)
    assert first == second
    assert not [p for p in (tmp_path / "root").rglob(".*") if "staging" in p.name]  # no leftovers


def test_an_empty_folder_is_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    ref = save_checkpoint_dir(tmp_path / "root", "exp/trial-000001/a1-s5", tmp_path / "empty", 5)
    assert tree_of(load_checkpoint_dir(tmp_path / "root", ref)) == {}


def test_the_wrong_loader_says_which_one_to_use(tmp_path: Path) -> None:
    single = save_checkpoint(tmp_path / "root", "exp/trial-000001/a1-s5.ckpt", {"w": 1}, 5, keyed=True)
    with pytest.raises(CheckpointError, match=r"single file.*load_checkpoint"):
        ctx(tmp_path / "root", 2, single).load_checkpoint_dir()
    folder = ctx(tmp_path / "root").save_checkpoint_dir(make_tree(tmp_path / "src"))
    with pytest.raises(CheckpointError, match=r"is a directory.*load_checkpoint_dir"):
        ctx(tmp_path / "root", 2, folder).load_checkpoint()


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "manifest"])
def test_a_damaged_directory_checkpoint_is_refused_on_load_and_by_verify(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "root"
    ref = ctx(root).save_checkpoint_dir(make_tree(tmp_path / "src"))
    files = root / directory_files_folder(ref.uri)
    weights = files / "sub" / "weights.bin"
    data = weights.read_bytes()
    weights.chmod(0o644)
    if damage == "flip":
        weights.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "truncate":
        weights.write_bytes(data[:-1])
    elif damage == "remove":
        weights.unlink()
    else:
        (root / ref.uri).write_bytes((root / ref.uri).read_bytes().replace(b"weights", b"weightz"))
    with pytest.raises(CheckpointError, match=r"weights.bin|sha256|bytes"):
        load_checkpoint_dir(root, ref)
    problem = verify_file(root, ref)
    assert problem is not None and ref.uri.split("/")[-1].removesuffix(".manifest") in problem
    assert verify_file(root, CheckpointRef(ref.uri + "x", 1, SHA, 5)) is not None  # missing manifest


def test_retention_deletes_the_manifest_and_its_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    keep = ctx(root, 1).save_checkpoint_dir(make_tree(tmp_path / "a"))
    drop = ctx(root, 2).save_checkpoint_dir(make_tree(tmp_path / "b"))
    for deleter in (local_deleter(root), checkpoint_deleter(str(root))):
        assert deleter(drop.uri) in (True, False)
    assert not (root / drop.uri).exists() and not (root / directory_files_folder(drop.uri)).exists()
    assert local_deleter(root)(drop.uri) is False  # idempotent, and says nothing was there
    assert verify_file(root, keep) is None


def test_a_folder_of_another_content_under_the_key_is_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ref = ctx(root).save_checkpoint_dir(make_tree(tmp_path / "src"))
    (root / ref.uri).unlink()
    victim = root / directory_files_folder(ref.uri) / "config.json"
    victim.chmod(0o644)
    victim.write_text("someone else's")
    with pytest.raises(CheckpointWriteError, match="exists with different content"):
        ctx(root).save_checkpoint_dir(make_tree(tmp_path / "again"))
    assert victim.read_text() == "someone else's"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ten_thousand_small_files_save_and_load_in_reasonable_time(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for shard in range(100):
        (src / f"s{shard:03d}").mkdir(parents=True)
        for i in range(100):
            (src / f"s{shard:03d}" / f"f{i:03d}.txt").write_bytes(f"{shard}-{i}".encode())
    began = time.perf_counter()
    ref = ctx(tmp_path / "root").save_checkpoint_dir(src)
    saved = time.perf_counter() - began
    began = time.perf_counter()
    loaded = load_checkpoint_dir(tmp_path / "root", ref)
    fetched = time.perf_counter() - began
    assert (loaded / "s042" / "f017.txt").read_bytes() == b"42-17"
    assert sum(1 for _ in loaded.rglob("*.txt")) == 10_000
    print(f"10,000 files: save {saved:.2f} s, load (verify) {fetched:.2f} s")
    assert saved < 60 and fetched < 30  # generous: a loaded 2-core machine


# --- retention and gc over directory checkpoints -------------------------------------------------

def test_retention_and_gc_delete_directory_checkpoints_whole_and_sweep_unreferenced_files(tmp_path: Path) -> None:
    """A small run whose every trial saves a directory: retention deletes each collected
    manifest with its files; ``gc``'s sweep removes what no record references (a writer that
    died before its manifest, an attempt's manifest never reported) and keeps the rest."""
    from pbt_actors.control.core import ControllerCore
    from pbt_actors.model.experiment import Experiment, Retention
    from pbt_actors.model.protocol import Report, RequestTrial, TrialAssignment
    from pbt_actors.model.records import trial_checkpoint_prefix
    from pbt_actors.model.space import Float
    from pbt_actors.runtime.controller.checkpoint_collector import (
        checkpoint_bytes,
        collect_store,
        sweep_orphan_directories,
    )
    from pbt_actors.storage.checkpoint_urls import open_store
    from pbt_actors.storage.dir_manifest import copy_tree_hashing
    from pbt_actors.storage.memory import InMemoryTrialStore

    root = tmp_path / "root"
    experiment = Experiment(name="dirs", space={"x": Float(0.0, 1.0)}, objective="score", population=2,
                            steps_per_trial=5, max_steps=20, policy="random", seed=3,
                            retention=Retention(keep_best=1))
    core = ControllerCore(InMemoryTrialStore(), experiment)
    for step in range(100):
        reply = core.handle(RequestTrial("w"), float(step))
        if not isinstance(reply, TrialAssignment):
            break
        folder = tmp_path / f"out-{reply.trial_id}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(f"trial {reply.trial_id}".encode())
        saved = save_checkpoint_dir(root, f"{trial_checkpoint_prefix('dirs', reply.trial_id)}a1-s{reply.end_step}",
                                    folder, reply.end_step)
        core.handle(Report("w", reply.trial_id, reply.attempt, {"score": float(reply.hparams["x"])},
                           checkpoint=saved), float(step))
    store = core.store
    last = max(t.id for t in store.iter_trials())
    # debris under a finished trial: files without a manifest, and a manifest nobody reported
    store_ = open_store(str(root))
    staging = store_.staging_folder(f"{trial_checkpoint_prefix('dirs', last)}a2-s20.manifest")
    (tmp_path / "debris").mkdir()
    (tmp_path / "debris" / "half.bin").write_bytes(b"half")
    files = copy_tree_hashing([("half.bin", tmp_path / "debris" / "half.bin")], staging)
    store_.commit_folder(staging, f"{trial_checkpoint_prefix('dirs', last)}a2-s20-{'0' * 16}.files", files, SHA)
    unreported = save_checkpoint_dir(root, f"{trial_checkpoint_prefix('dirs', last)}a3-s20", tmp_path / "debris", 20)
    killed = store_.staging_folder(f"{trial_checkpoint_prefix('dirs', last)}a4-s20.manifest")  # killed mid-copy
    (killed / "part.bin").write_bytes(b"partial")

    result = collect_store(store, experiment, checkpoint_deleter(str(root)), now=1.0,
                           size_of=checkpoint_bytes(str(root)))
    assert result.deleted and not result.errors
    manifests = sum(r.bytes for i in result.deleted if (r := store.get_trial(i).checkpoint) is not None)
    assert result.bytes_freed == manifests + sum(len(f"trial {i}") for i in result.deleted)  # manifests + files
    for trial_id in result.deleted:
        gone = store.get_trial(trial_id).checkpoint
        assert gone is not None and not (root / gone.uri).exists()
        assert not (root / directory_files_folder(gone.uri)).exists()
    orphans, _ = sweep_orphan_directories(store, experiment, str(root), dry_run=True)
    assert orphans == [*sorted([f"{trial_checkpoint_prefix('dirs', last)}a2-s20-{'0' * 16}.manifest", unreported.uri]),
                       killed.relative_to(root.resolve()).as_posix()]
    assert sweep_orphan_directories(store, experiment, str(root)) == (orphans, [])
    kept = [store.checkpoint(i) for i in store.checkpoint_ids()]
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    expected = sorted([r.uri for r in kept if r] + [f"{directory_files_folder(r.uri)}/weights.bin" for r in kept if r])
    assert left == expected
    assert all(verify_file(root, r) is None for r in kept if r)


# --- replay of a directory lineage ---------------------------------------------------------------

def counting_train(ctx: TrialContext) -> dict[str, float]:
    """A ``train`` that keeps its state as a folder (as ``save_pretrained`` would)."""
    parent = ctx.load_checkpoint_dir()
    total = float((parent / "state" / "total.txt").read_text()) if parent is not None else 0.0
    for step in range(ctx.start_step, ctx.end_step):
        total += float(ctx.hparams["lr"]) * (step + 1)
    out = Path(ctx.checkpoint_root).parent / f"work-{ctx.trial_id}-{ctx.end_step}"
    (out / "state").mkdir(parents=True)
    (out / "state" / "total.txt").write_text(repr(total))
    (out / "config.json").write_text(json.dumps(dict(ctx.hparams)))
    ctx.save_checkpoint_dir(out)
    return {"total": total}


def test_replay_of_a_directory_lineage_from_scratch_and_from_a_stored_step(tmp_path: Path) -> None:
    from pbt_actors.tools.lineage import Schedule, Segment
    from pbt_actors.tools.replay import replay

    search = tmp_path / "search"
    first = ctx(search)
    first.hparams = {"lr": 0.5}
    first.end_step = 3
    original = counting_train(first)
    segments = (Segment(0, 3, {"lr": 0.5}, 1, final=original, checkpoint=first.saved),
                Segment(3, 6, {"lr": 2.0}, 2, generation=1))
    schedule = Schedule(2, segments, experiment="exp")
    whole = replay(schedule, counting_train, checkpoint_root=tmp_path / "r1" / "ckpt")
    assert whole.final == {"total": 0.5 * (1 + 2 + 3) + 2.0 * (4 + 5 + 6)}
    assert whole.segments[0].final == original  # bit-identical segment
    state = whole.load_state()
    assert isinstance(state, Path) and state == whole.state_path and (state / "state" / "total.txt").exists()
    part = replay(schedule, counting_train, checkpoint_root=tmp_path / "r2" / "ckpt", from_step=3,
                  source_checkpoint_root=search)
    assert part.final == whole.final
    copied = tmp_path / "r2" / "ckpt" / directory_files_folder(first.saved.uri)  # type: ignore[union-attr]
    assert (copied / "config.json").read_text() == '{"lr": 0.5}'


# --- a whole run of directory checkpoints, then verify and a tampered file ------------------------

def folder_train(ctx: TrialContext) -> dict[str, float]:
    parent = ctx.load_checkpoint_dir()
    theta = float((parent / "theta.txt").read_text()) if parent is not None else 0.0
    theta += float(ctx.hparams["x"]) * (ctx.end_step - ctx.start_step)
    out = Path(ctx.checkpoint_root).parent / "work" / f"t{ctx.trial_id}-a{ctx.attempt}"
    (out / "nested").mkdir(parents=True)
    (out / "theta.txt").write_text(repr(theta))
    (out / "nested" / "opt.bin").write_bytes(bytes(ctx.trial_id % 256) * 100)
    ctx.save_checkpoint_dir(out)
    return {"score": -abs(theta - 3.0)}


def test_a_run_of_directory_checkpoints_warm_starts_and_verify_checks_every_file(tmp_path: Path) -> None:
    from pbt_actors.model.experiment import Experiment, Retention
    from pbt_actors.model.space import Float
    from pbt_actors.tools.inprocess import run_inprocess
    from pbt_actors.tools.verify import verify_store

    root = tmp_path / "ckpt"
    experiment = Experiment(name="dirs", space={"x": Float(0.0, 1.0)}, objective="score", population=3,
                            steps_per_trial=2, max_steps=8, seed=5, retention=Retention(keep_best=2))
    core = run_inprocess(experiment, folder_train, root, workers=2)
    trials = list(core.store.iter_trials())
    assert trials and all(t.checkpoint is not None and is_directory_checkpoint(t.checkpoint) for t in trials
                          if t.status.name == "COMPLETED")
    assert any(t.parent_id is not None for t in trials)  # warm starts from parents' folders
    report = verify_store(core.store, root)
    assert report.ok, report.problems
    kept = [core.store.checkpoint(i) for i in core.store.checkpoint_ids()]
    victim = root / directory_files_folder(kept[0].uri) / "nested" / "opt.bin"  # type: ignore[union-attr]
    victim.chmod(0o644)
    victim.write_bytes(b"flipped")
    report = verify_store(core.store, root)
    assert not report.ok and any("opt.bin" in p for p in report.problems)


def test_export_copies_the_best_models_folder_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI on a real LMDB store: ``export --format checkpoint`` writes the best trial's
    directory checkpoint as a folder, never over an existing one; ``gc`` sweeps files no
    manifest names and keeps the best; a tampered stored file stops the export."""
    from pbt_actors.cli.main import main
    from pbt_actors.model.experiment import Experiment, Retention
    from pbt_actors.model.space import Float
    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from pbt_actors.tools.inprocess import run_inprocess

    store_dir = tmp_path / "store"
    experiment = Experiment(name="dirs", space={"x": Float(0.0, 1.0)}, objective="score", population=2,
                            steps_per_trial=2, max_steps=6, seed=9, retention=Retention(keep_best=1))
    with LmdbTrialStore(store_dir) as store:
        core = run_inprocess(experiment, folder_train, store_dir / "checkpoints", store=store)
        best = max((t for t in core.store.iter_trials() if t.final), key=lambda t: t.final["score"])  # type: ignore[index]
        ref = best.checkpoint
    assert ref is not None and is_directory_checkpoint(ref)
    out = tmp_path / "exported" / "best-model"
    assert main(["export", "--store", str(store_dir), "--format", "checkpoint", "--out", str(out)]) == 0
    stored = store_dir / "checkpoints" / directory_files_folder(ref.uri)
    assert tree_of(out) == tree_of(stored)
    (out / "theta.txt").write_text("the user's copy is writable")
    again = ["export", "--store", str(store_dir), "--format", "checkpoint", "--out", str(out)]
    assert main(again) == 2  # never overwritten
    debris = store_dir / "checkpoints" / f"{directory_files_folder(ref.uri).rsplit('-', 1)[0]}-{'f' * 16}.files"
    debris.mkdir()
    (debris / "half.bin").write_bytes(b"a writer died here")
    capsys.readouterr()
    assert main(["gc", "--store", str(store_dir), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["unreferenced_directories"] == [f"{directory_files_folder(ref.uri).rsplit('-', 1)[0]}-{'f' * 16}"
                                                ".manifest"]
    assert not debris.exists() and tree_of(stored)  # the best one's folder is kept
    victim = stored / "theta.txt"
    victim.chmod(0o644)
    victim.write_text("9")
    assert main(["export", "--store", str(store_dir), "--format", "checkpoint", "--out", str(tmp_path / "again")]) != 0
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())
