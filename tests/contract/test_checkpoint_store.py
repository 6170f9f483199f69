"""One contract, every ``CheckpointStore``: a local folder, an S3 bucket on a real
S3-compatible server (moto's standalone server, its own process on loopback), and fsspec's
in-memory filesystem (standing for any other protocol, without S3's multipart uploads).

Put-once keys carrying the sha256, verified reads (missing, truncated, tampered), idempotent
delete, listing without staging leftovers, no leftovers after a failed write, multipart
uploads for large files, and the local cache that spares a worker the download of what it
just wrote.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError, ConfigError
from pbt_actors.model.records import CheckpointRef, directory_files_folder, is_directory_checkpoint
from pbt_actors.runtime.checkpoint_payloads import (
    delete_checkpoint,
    load_checkpoint,
    load_checkpoint_dir,
    save_checkpoint,
    save_checkpoint_dir,
    verify_file,
)
from pbt_actors.storage.checkpoint_cache import STAGING, CheckpointCache
from pbt_actors.storage.checkpoint_store import CheckpointStore
from pbt_actors.storage.checkpoint_urls import local_state_folder, normalize_root, open_store
from pbt_actors.storage.fsspec_checkpoints import FsspecCheckpointStore
from pbt_actors.storage.local_checkpoints import LocalCheckpointStore
from tests.support.s3_server import S3Server, serving_bucket

pytest.importorskip("s3fs")
BUCKET = "pbt-contract"
MiB = 2**20


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with serving_bucket(BUCKET) as server:
        yield server


StoreFactory = Callable[[str], CheckpointStore]
"""``make(cache_name)``: a store on the test's root, with its own cache folder for S3."""


@pytest.fixture(params=["local", "s3", "memory"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    prefix = uuid.uuid4().hex[:10]
    if request.param == "local":
        root = tmp_path / "root"
        return lambda cache="a": LocalCheckpointStore(root)
    if request.param == "memory":  # any other fsspec protocol: no multipart, no S3 semantics
        return lambda cache="a": FsspecCheckpointStore(f"memory://ckpt-{prefix}",
                                                      CheckpointCache(tmp_path / cache, 1 << 30), options={})
    request.getfixturevalue("s3")
    return lambda cache="a": FsspecCheckpointStore(f"s3://{BUCKET}/{prefix}",
                                                  CheckpointCache(tmp_path / cache, 1 << 30),
                                                  options={}, part_bytes=5 * MiB)


def damage(store: CheckpointStore, uri: str, data: bytes) -> None:
    """Replace the object under ``uri`` behind the store's back (a bit flip, a truncation)."""
    path = store.local_path(uri)
    if path is not None:
        path.write_bytes(data)
        return
    assert isinstance(store, FsspecCheckpointStore)
    with store.fs.open(store.object_path(uri), "wb") as handle:
        handle.write(data)


def test_round_trip_under_a_key_carrying_the_sha256(make: StoreFactory) -> None:
    store = make("a")
    ref = save_checkpoint(store, "exp/trial-000001/a1-s5.ckpt", {"theta": [1.0, 2.0]}, 5, keyed=True)
    assert ref.uri == f"exp/trial-000001/a1-s5-{ref.sha256[:16]}.ckpt"
    data = store.read_verified(ref)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (ref.bytes, ref.sha256)
    assert load_checkpoint(make("b"), ref) == {"theta": [1.0, 2.0]}  # another host, empty cache
    assert list(store.list_uris()) == [ref.uri]
    assert store.exists(ref.uri)


def test_put_once_same_bytes_again_is_a_no_op_different_bytes_refused(make: StoreFactory) -> None:
    store = make("a")
    first = save_checkpoint(store, "exp/t1.ckpt", {"w": 1}, 1)
    assert save_checkpoint(store, "exp/t1.ckpt", {"w": 1}, 1) == first
    with pytest.raises(CheckpointWriteError, match="different content"):
        save_checkpoint(make("b"), "exp/t1.ckpt", {"w": 2}, 1)
    assert load_checkpoint(make("c"), first) == {"w": 1}  # the original is intact
    assert list(store.list_uris()) == ["exp/t1.ckpt"]


def test_missing_truncated_and_tampered_objects_are_caught_before_loading(make: StoreFactory) -> None:
    writer = make("a")
    ref = save_checkpoint(writer, "exp/t2.ckpt", {"theta": list(range(100))}, 3, keyed=True)
    good = writer.read_verified(ref)
    flipped = bytes([good[0]]) + bytes([good[1] ^ 0xFF]) + good[2:]
    damage(writer, ref.uri, flipped)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(make("fresh1"), ref)
    damage(writer, ref.uri, good[:-7])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(make("fresh2"), ref)
    with pytest.raises(CheckpointError, match="missing"):
        make("fresh3").read_verified(CheckpointRef("exp/nothing.ckpt", 3, "0" * 64, 1))


def test_delete_is_idempotent_and_list_shows_only_committed_keys(make: StoreFactory) -> None:
    store = make("a")
    refs = [save_checkpoint(store, f"exp/trial-{i:06d}/a1-s{i}.ckpt", {"i": i}, i, keyed=True) for i in range(3)]
    assert sorted(store.list_uris()) == sorted(r.uri for r in refs)
    store.delete(refs[1].uri)
    store.delete(refs[1].uri)  # again: fine
    store.delete("exp/never-written.ckpt")
    assert sorted(store.list_uris()) == sorted(r.uri for r in (refs[0], refs[2]))
    assert not store.exists(refs[1].uri)
    with pytest.raises(CheckpointError, match="missing"):
        make("fresh").read_verified(refs[1])


@pytest.mark.parametrize("uri", ["../outside.ckpt", "a/../../outside.ckpt", "/abs.ckpt", "", "a//b.ckpt"])
def test_keys_that_leave_the_root_are_refused(make: StoreFactory, uri: str, tmp_path: Path) -> None:
    store = make("a")
    with pytest.raises(CheckpointError):
        save_checkpoint(store, uri, {"w": 1}, 1)
    with pytest.raises(CheckpointError):
        store.read_verified(CheckpointRef(uri or "x/../..", 1, "0" * 64, 1))
    assert not (tmp_path / "outside.ckpt").exists()
    assert list(store.list_uris()) == []


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, s3: S3Server) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the checkpoint root should be")
    with pytest.raises(CheckpointWriteError):
        save_checkpoint(LocalCheckpointStore(not_a_folder), "exp/t.ckpt", {"w": 1}, 1)
    cache = CheckpointCache(tmp_path / "cache", 1 << 30)
    no_bucket = FsspecCheckpointStore("s3://no-such-bucket-here/p", cache, options={})
    with pytest.raises(CheckpointWriteError, match="cannot upload"):
        save_checkpoint(no_bucket, "exp/t.ckpt", {"w": 1}, 1, keyed=True)
    assert os.listdir(tmp_path / "cache" / STAGING) == []
    assert cache.entries() == []


def test_large_checkpoints_go_up_in_parts_and_come_back_verified(make: StoreFactory, tmp_path: Path) -> None:
    store = make("a")
    blob = os.urandom(12 * MiB)  # > 2 parts of 5 MiB: s3fs uses a multipart upload
    ref = save_checkpoint(store, "exp/big.ckpt", {"blob": blob}, 1, keyed=True)
    assert ref.bytes > 12 * MiB
    assert load_checkpoint(make("b"), ref) == {"blob": blob}
    if isinstance(store, FsspecCheckpointStore) and store.protocol == "s3":
        assert S3Client.open_uploads() == []


class S3Client:
    """What the server itself says (not our code): multipart uploads still open."""

    server: S3Server | None = None

    @classmethod
    def open_uploads(cls) -> list[str]:
        assert cls.server is not None
        listing = cls.server.client().list_multipart_uploads(Bucket=BUCKET)
        return [u["Key"] for u in listing.get("Uploads", [])]


@pytest.fixture(autouse=True)
def _client(request: pytest.FixtureRequest) -> None:
    if "s3" in request.fixturenames:
        S3Client.server = request.getfixturevalue("s3")


def test_a_worker_reads_back_its_own_checkpoint_from_the_cache(tmp_path: Path, s3: S3Server) -> None:
    store = FsspecCheckpointStore(f"s3://{BUCKET}/own-{uuid.uuid4().hex[:8]}", CheckpointCache(tmp_path / "c", 1 << 30),
                                  options={})
    ref = save_checkpoint(store, "exp/t.ckpt", {"w": 7}, 1, keyed=True)
    s3.client().delete_object(Bucket=BUCKET, Key=f"{store.root.split('/', 3)[3]}/{ref.uri}")
    assert load_checkpoint(store, ref) == {"w": 7}  # no download: the object is gone from the bucket
    with pytest.raises(CheckpointError, match="missing"):  # another host has no cached copy
        load_checkpoint(FsspecCheckpointStore(store.root, CheckpointCache(tmp_path / "d", 1 << 30), options={}), ref)


def test_a_damaged_cache_entry_is_dropped_and_fetched_again(tmp_path: Path, s3: S3Server) -> None:
    cache = CheckpointCache(tmp_path / "c", 1 << 30)
    store = FsspecCheckpointStore(f"s3://{BUCKET}/dmg-{uuid.uuid4().hex[:8]}", cache, options={})
    ref = save_checkpoint(store, "exp/t.ckpt", {"w": 8}, 1, keyed=True)
    entry = cache.path_for(ref.sha256)
    entry.write_bytes(b"x" * ref.bytes)
    assert load_checkpoint(store, ref) == {"w": 8}
    assert store.read_verified(ref) == entry.read_bytes()  # the refetched copy replaced it


def test_the_cache_keeps_the_most_recently_used_within_its_byte_budget(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c", 3000)
    digests = []
    for i in range(4):
        data = bytes([i]) * 1000
        digest = hashlib.sha256(data).hexdigest()
        digests.append(digest)
        temp = cache.new_temp()
        temp.write_bytes(data)
        os.utime(temp, (1000 + i, 1000 + i))
        cache.adopt(temp, digest)
        os.utime(cache.path_for(digest), (1000 + i, 1000 + i))
        if i == 2:
            assert cache.lookup(digests[0]) is not None  # used again: now the most recent
    kept = {p.name for _, _, p in cache.entries()}
    assert kept == {digests[0], digests[2], digests[3]}
    assert sum(size for _, size, _ in cache.entries()) <= 3000


def test_urls_with_credentials_are_refused_and_roots_normalized(tmp_path: Path) -> None:
    for url in ("s3://AKIA:secret@bucket/p", "s3://user@bucket/p", "s3://bucket/p?token=x", "s3:///p"):
        with pytest.raises(ConfigError):
            open_store(url)
    assert normalize_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert normalize_root(tmp_path / "a" / ".." / "b") == str(tmp_path / "b")
    assert isinstance(open_store(str(tmp_path)), LocalCheckpointStore)
    assert local_state_folder(tmp_path) == tmp_path
    os.environ["PBT_ACTORS_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        here = local_state_folder("s3://bucket/prefix")
        assert here.is_relative_to(tmp_path / "cache") and here != local_state_folder("s3://bucket/other")
    finally:
        del os.environ["PBT_ACTORS_CACHE_DIR"]


# --- directory checkpoints: the same contract for a folder of files (storage/dir_manifest.py) ----

def checkpoint_folder(base: Path, files: int = 6) -> Path:
    """A folder like ``save_pretrained`` writes: nested files, a dotfile, an empty file."""
    (base / "shards").mkdir(parents=True)
    (base / "config.json").write_text('{"layers": 2}')
    (base / ".gitattributes").write_text("*.bin binary\n")
    (base / "empty.txt").write_bytes(b"")
    for i in range(files):
        (base / "shards" / f"part-{i:03d}.bin").write_bytes(bytes([i]) * (1000 + i))
    return base


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def damage_file(store: CheckpointStore, key: str, data: bytes | None) -> None:
    """Replace (or remove, with None) one stored file of a directory checkpoint."""
    path = store.local_path(key)
    if path is not None:
        path.unlink()
        if data is not None:
            path.write_bytes(data)
        return
    assert isinstance(store, FsspecCheckpointStore)
    if data is None:
        store.fs.rm_file(store.object_path(key))
    else:
        with store.fs.open(store.object_path(key), "wb") as handle:
            handle.write(data)


def test_a_directory_round_trips_through_another_host_verified(make: StoreFactory, tmp_path: Path) -> None:
    source = checkpoint_folder(tmp_path / "src")
    ref = save_checkpoint_dir(make("a"), "exp/trial-000001/a1-s5", source, 5)
    assert ref.uri == f"exp/trial-000001/a1-s5-{ref.sha256[:16]}.manifest" and is_directory_checkpoint(ref)
    loaded = load_checkpoint_dir(make("b"), ref)  # another host: an empty cache
    assert folder_bytes(loaded) == folder_bytes(source)
    listed = list(make("c").list_uris())
    assert ref.uri in listed and f"{directory_files_folder(ref.uri)}/shards/part-003.bin" in listed
    assert verify_file(make("d"), ref) is None
    assert save_checkpoint_dir(make("e"), "exp/trial-000001/a1-s5", source, 5) == ref  # put-once: a no-op


def test_a_damaged_file_of_a_directory_is_caught_on_fetch_and_by_verify(make: StoreFactory, tmp_path: Path) -> None:
    writer = make("a")
    ref = save_checkpoint_dir(writer, "exp/trial-000001/a1-s5", checkpoint_folder(tmp_path / "src"), 5)
    key = f"{directory_files_folder(ref.uri)}/shards/part-002.bin"
    good = bytes([2]) * 1002
    for data, message in ((good[:-1] + b"\x07", "sha256"), (good[:-3], "truncated"), (None, r"missing|incomplete")):
        damage_file(writer, key, data)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint_dir(make(f"fresh-{message[:4]}"), ref)
        problem = verify_file(writer, ref)  # the stored objects, never a cached copy
        assert problem is not None and "part-002.bin" in problem


def test_a_writer_dying_before_its_manifest_leaves_nothing_referenced(make: StoreFactory, tmp_path: Path) -> None:
    """The files go up first, the manifest last: without the manifest there is no ref to load."""
    from pbt_actors.storage.dir_manifest import copy_tree_hashing, encode_manifest, scan_directory

    store = make("a")
    staging = store.staging_folder("exp/trial-000001/a1-s5.manifest")
    files = copy_tree_hashing(scan_directory(checkpoint_folder(tmp_path / "src")), staging)
    sha = hashlib.sha256(encode_manifest(files)).hexdigest()
    manifest_uri = f"exp/trial-000001/a1-s5-{sha[:16]}.manifest"
    store.commit_folder(staging, directory_files_folder(manifest_uri), files, sha)  # ... then the writer dies
    assert not [u for u in store.list_uris() if u.endswith(".manifest")]
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint_dir(make("b"), CheckpointRef(manifest_uri, 10, sha, 5))


def test_deleting_a_directory_checkpoint_removes_its_manifest_and_every_file(make: StoreFactory,
                                                                             tmp_path: Path) -> None:
    store = make("a")
    keep = save_checkpoint_dir(store, "exp/trial-000001/a1-s5", checkpoint_folder(tmp_path / "k", 2), 5)
    drop = save_checkpoint_dir(store, "exp/trial-000002/a1-s5", checkpoint_folder(tmp_path / "d", 3), 5)
    assert delete_checkpoint(store, drop.uri) is True
    assert delete_checkpoint(store, drop.uri) is False  # idempotent
    assert all(u.startswith("exp/trial-000001/") for u in store.list_uris())
    assert verify_file(make("b"), keep) is None


def test_a_fetched_directory_is_cached_per_host(tmp_path: Path, s3: S3Server) -> None:
    root = f"s3://{BUCKET}/dircache-{uuid.uuid4().hex[:8]}"
    writer = FsspecCheckpointStore(root, CheckpointCache(tmp_path / "w", 1 << 30), options={})
    ref = save_checkpoint_dir(writer, "exp/trial-000001/a1-s5", checkpoint_folder(tmp_path / "src"), 5)
    assert load_checkpoint_dir(writer, ref).is_relative_to(tmp_path / "w")  # the writer kept its upload
    reader = FsspecCheckpointStore(root, CheckpointCache(tmp_path / "r", 1 << 30), options={})
    first = load_checkpoint_dir(reader, ref)
    writer.delete_folder(directory_files_folder(ref.uri))  # gone from the bucket ...
    assert load_checkpoint_dir(reader, ref) == first  # ... yet this host still has it, verified
    entry = first / "config.json"
    entry.chmod(0o644)
    entry.write_text("tampered in the cache")
    with pytest.raises(CheckpointError, match=r"incomplete|missing"):  # never trusted: dropped, refetched
        load_checkpoint_dir(reader, ref)


def test_cached_folders_are_evicted_by_bytes_unless_a_process_holds_them(tmp_path: Path) -> None:
    from pbt_actors.storage import checkpoint_cache

    cache = CheckpointCache(tmp_path / "c", 2500)
    entries = []
    for i in range(3):
        temp = cache.new_temp_dir()
        (temp / "f").write_bytes(bytes([i]) * 1000)
        entries.append(cache.adopt_dir(temp, f"{i:02d}" * 32, 1000))
        os.utime(entries[-1], (1000 + i, 1000 + i))
    assert all(e.is_dir() for e in entries)  # all held by this process: nothing evicted under it
    for lock, (fd, _pid) in list(checkpoint_cache._held.items()):  # the trials moved on
        os.close(fd)
        del checkpoint_cache._held[lock]
    cache.evict()
    assert [e.is_dir() for e in entries] == [False, True, True]
