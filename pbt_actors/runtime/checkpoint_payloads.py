"""Checkpoint payloads: encoded and hashed on the way out, verified before every load.

Layer 4 helper over a ``CheckpointStore`` (``pbt_actors.storage.checkpoint_store``: a local
folder or any fsspec URL such as ``s3://bucket/prefix``). A checkpoint is streamed by the
worker into a local staging file the store names (in the target folder, or in the local
cache for a URL), hashed with sha256 as it streams (never held twice in memory), then
committed put-once under its final key; only then does its ``CheckpointRef`` (sha256, size)
exist to be reported, so the controller never records a checkpoint whose upload did not
finish. A child verifies size and hash *before* parsing, so a truncated or tampered file is a
clear ``CheckpointError`` rather than a crash deep in torch.

Two payload formats, chosen by content: plain data (dicts, lists, numbers, strings: no
torch needed, e.g. the toy example) is msgpack; anything holding tensors goes through
``torch.save`` and is loaded with ``weights_only=True``. Never pickle.

Directory checkpoints (``save_checkpoint_dir``/``load_checkpoint_dir``, docs/design.md §8.6):
a local folder is copied into the store's staging folder while every file is hashed, its
manifest (``storage/dir_manifest.py``) names the files' folder by its sha256, the files are
committed, then the manifest last; the ``CheckpointRef`` is the manifest's. Loading reads and
verifies the manifest, then returns a local folder whose every file was checked.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import io
import os
from pathlib import Path
from typing import IO, Any, cast

from pbt_actors.common.atomic_files import atomic_write
from pbt_actors.model import wire
from pbt_actors.model.errors import CheckpointError, CheckpointStoreFault, CheckpointWriteError, WireError
from pbt_actors.model.records import (
    MANIFEST_SUFFIX,
    CheckpointRef,
    directory_files_folder,
    is_directory_checkpoint,
)
from pbt_actors.storage.checkpoint_store import CheckpointStore, keyed_name
from pbt_actors.storage.checkpoint_urls import open_store
from pbt_actors.storage.dir_manifest import (
    ManifestFile,
    copy_tree_hashing,
    decode_manifest,
    encode_manifest,
    scan_directory,
    total_bytes,
)
from pbt_actors.storage.local_checkpoints import inside_root

__all__ = ["StagedCheckpoint", "StagedDirectory", "check_checkpoint_root", "delete_checkpoint", "inside_root",
           "load_checkpoint", "load_checkpoint_dir", "read_manifest", "read_verified", "save_checkpoint",
           "save_checkpoint_dir", "stage_checkpoint", "stage_checkpoint_dir", "store_for", "verify_file"]

_MSGPACK_MAGIC = b"PBTMP1\n"


_PARALLEL_HASH_BYTES = 1 << 20
"""Chunks at least this large are hashed on a helper thread while the file write goes on (both
release the GIL): a large tensor's bytes are hashed and written at once instead of in turn."""


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through (streamed, so a
    checkpoint is never held a second time in memory to be hashed). Large chunks are hashed on
    a helper thread of this writer's own, ended by ``close``: a thread kept for the whole
    process would outlive the save, and a process with a stray thread can no longer fork a
    worker zygote safely (``runtime/host/zygote.py`` refuses)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._hashing: concurrent.futures.Future[None] | None = None
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> _HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the last chunk's hash and end the helper thread (if one was started)."""
        try:
            self._wait_hash()
        finally:
            if self._hasher is not None:
                self._hasher.shutdown(wait=True)
                self._hasher = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._wait_hash()  # in order: the previous chunk's hash first
        if view.nbytes >= _PARALLEL_HASH_BYTES:
            if self._hasher is None:
                self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash")
            self._hashing = self._hasher.submit(self._sha256.update, view)  # ``view`` stays alive meanwhile
        else:
            self._sha256.update(view)
        self.size += view.nbytes
        try:
            self._handle.write(view)
        finally:
            self._wait_hash()  # the caller may reuse its buffer once ``write`` returned
        return view.nbytes

    def _wait_hash(self) -> None:
        if self._hashing is not None:
            hashing, self._hashing = self._hashing, None
            hashing.result()

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        self._wait_hash()
        return self._sha256.hexdigest()


def _msgpack_payload(state: Any) -> bytes | None:
    """``state`` as msgpack when it is plain data, else None (it needs torch)."""
    try:
        return wire.pack(state)
    except WireError:
        return None


def _torch_save(state: Any, sink: _HashingWriter) -> None:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - only without torch
        raise CheckpointError(f"state of type {type(state).__name__} needs torch to be saved") from exc
    torch.save(state, cast("IO[bytes]", sink))  # torch needs only write() and flush()


def _decode(data: bytes | bytearray, where: str) -> Any:
    if data.startswith(_MSGPACK_MAGIC):
        try:
            return wire.unpack(bytes(data[len(_MSGPACK_MAGIC):]), max_bytes=len(data), max_depth=64)
        except WireError as exc:
            raise CheckpointError(f"checkpoint {where} is not valid msgpack: {exc}") from exc
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {where} could not be loaded safely: {exc}") from exc


def store_for(root: str | os.PathLike[str] | CheckpointStore) -> CheckpointStore:
    """The store of ``root`` (a folder, a URL, or already a store); one per root and process."""
    if isinstance(root, CheckpointStore):
        return root
    return _store_for(str(root), os.getpid())


@functools.lru_cache(maxsize=32)
def _store_for(root: str, pid: int) -> CheckpointStore:
    return open_store(root)


Root = str | os.PathLike[str] | CheckpointStore


def save_checkpoint(root: Root, relative_uri: str, state: Any, step: int, *, keyed: bool = False) -> CheckpointRef:
    """Write ``state`` once under ``relative_uri`` of the store at ``root`` and describe it.

    Put-once: a key already holding different content is never replaced (it may be a
    completed trial's checkpoint that children load); writing the same bytes again is a
    no-op. ``keyed``: the final key carries the content's sha256 (``keyed_name``:
    ``name-<sha16>.ckpt``), which object stores need (no rename, no create-if-absent) and
    which makes two writers of one key harmless everywhere.

    The two halves, ``stage_checkpoint`` (reads ``state``) and ``StagedCheckpoint.commit``
    (only bytes), are also called apart by the background writer (``runtime/worker/background_writes.py``):
    once staged, the state may change again while the bytes are made durable.

    Raises:
        CheckpointError: the uri escapes the root.
        CheckpointWriteError: the disk is full, the folder not writable, the upload failed,
            or different content exists under that key; no staging file is left behind.
    """
    return stage_checkpoint(root, relative_uri, state).commit(step, keyed=keyed)


class StagedCheckpoint:
    """A payload serialized and hashed into its staging file, not yet under its final key.

    ``commit`` places it put-once (a link, or an upload) and removes the staging file;
    ``discard`` only removes it. Either way the staging file is gone after one of them."""

    def __init__(self, store: CheckpointStore, relative_uri: str, staging: Path, size: int, sha256: str) -> None:
        self.store, self.relative_uri, self.staging = store, relative_uri, staging
        self.size, self.sha256 = size, sha256

    def commit(self, step: int, *, keyed: bool = False) -> CheckpointRef:
        """Put the staged bytes under their final key and describe them (``save_checkpoint``)."""
        try:
            final = keyed_name(self.relative_uri, self.sha256) if keyed else self.relative_uri
            self.store.commit(self.staging, final, self.size, self.sha256)
        finally:
            self.discard()
        return CheckpointRef(final, self.size, self.sha256, step)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.staging)


def stage_checkpoint(root: Root, relative_uri: str, state: Any) -> StagedCheckpoint:
    """Serialize ``state`` into the store's staging file for ``relative_uri``, hashing as it
    streams (the only step that reads ``state``). Raises as ``save_checkpoint``."""
    store = store_for(root)
    payload = _msgpack_payload(state)
    staging = store.staging_path(relative_uri)
    try:
        with atomic_write(staging) as handle, _HashingWriter(handle) as sink:
            if payload is not None:
                sink.write(_MSGPACK_MAGIC)
                sink.write(payload)
            else:
                _torch_save(state, sink)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise CheckpointWriteError(f"cannot write checkpoint {store.describe(relative_uri)}: "
                                   f"{exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return StagedCheckpoint(store, relative_uri, staging, sink.size, sink.hexdigest())


def check_checkpoint_root(root: Root) -> None:
    """Raise ``CheckpointStoreFault`` unless a checkpoint can be written under ``root`` now
    (``CheckpointStore.probe_writable``: the folder is writable, the bucket exists)."""
    store = store_for(root)
    try:
        store.probe_writable()
    except (CheckpointWriteError, CheckpointError) as exc:
        raise CheckpointStoreFault(f"the checkpoint root {store.root} cannot be written: {exc}") from exc


def read_verified(root: Root, ref: CheckpointRef) -> bytes | bytearray:
    """The checkpoint's bytes after checking presence, size and sha256.

    Raises:
        CheckpointError: missing, truncated, or hash mismatch (with what was expected).
    """
    return store_for(root).read_verified(ref)


def load_checkpoint(root: Root, ref: CheckpointRef) -> Any:
    """Verify, then decode (msgpack, or torch with ``weights_only=True``).

    Raises:
        CheckpointError: also when ``ref`` is a directory checkpoint (``load_checkpoint_dir``).
    """
    if is_directory_checkpoint(ref):
        raise CheckpointError(f"checkpoint {ref.uri} is a directory: load it with load_checkpoint_dir() "
                              "(ctx.load_checkpoint_dir())")
    return _decode(read_verified(root, ref), ref.uri)


def save_checkpoint_dir(root: Root, relative_uri: str, local_dir: str | os.PathLike[str], step: int) -> CheckpointRef:
    """Store the local folder ``local_dir`` put-once as a directory checkpoint and describe it.

    ``relative_uri`` names the manifest before its sha256 is known (``.../a1-s5.manifest``;
    ``.manifest`` is added when missing); the final keys are ``.../a1-s5-<sha16>.manifest`` and
    its files under ``.../a1-s5-<sha16>.files/``. Saving the same content twice is a no-op.

    The two halves, ``stage_checkpoint_dir`` (reads ``local_dir``) and
    ``StagedDirectory.commit`` (only the staged copy), are also called apart by the background
    writer, as for ``save_checkpoint``.

    Raises:
        CheckpointError: the uri escapes the root, or the folder holds something that cannot
            be stored (a symbolic link out of it, a FIFO, more than ``MAX_FILES`` files...).
        CheckpointWriteError: the disk is full, the upload failed, or different content exists.
    """
    return stage_checkpoint_dir(root, relative_uri, local_dir).commit(step)


class StagedDirectory:
    """A directory checkpoint copied and hashed into the store's staging folder (its manifest
    known), not yet committed. ``commit`` makes it durable (fsync and rename, or upload) and
    consumes the staging folder; ``discard`` only removes it."""

    def __init__(self, store: CheckpointStore, relative_uri: str, staging: Path, files: list[ManifestFile]) -> None:
        self.store, self.staging, self.files = store, staging, files
        self.manifest = encode_manifest(files)
        self.sha256 = hashlib.sha256(self.manifest).hexdigest()
        self.final = keyed_name(relative_uri, self.sha256)
        self.local: Path | None = None
        """After ``commit``: where this host now holds the committed files (the stored folder
        of a local root, the cache entry of a URL's), or None when it cannot tell."""

    def commit(self, step: int) -> CheckpointRef:
        """The files, then the manifest last, put-once; the manifest's ``CheckpointRef``."""
        store, final, manifest = self.store, self.final, self.manifest
        try:
            store.commit_folder(self.staging, directory_files_folder(final), self.files, self.sha256)
        finally:
            self.discard()
        manifest_staging = store.staging_path(final)
        try:
            try:
                with atomic_write(manifest_staging) as handle:
                    handle.write(manifest)
            except OSError as exc:
                raise CheckpointWriteError(f"cannot write checkpoint {store.describe(final)}: "
                                           f"{exc.strerror or exc}") from exc
            store.commit(manifest_staging, final, len(manifest), self.sha256)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(manifest_staging)
        self.local = _committed_folder(store, final, self.files, self.sha256)
        return CheckpointRef(final, len(manifest), self.sha256, step)

    def discard(self) -> None:
        _remove_staging_folder(self.staging)


def _committed_folder(store: CheckpointStore, manifest_uri: str, files: list[ManifestFile], sha256: str) -> Path | None:
    """The local folder holding a just-committed directory checkpoint's files, for the worker to
    hand to the lineage's next trial without a fetch or a re-hash (``StateCache``)."""
    local = store.local_path(directory_files_folder(manifest_uri))
    if local is None:
        cache = getattr(store, "cache", None)  # a URL's store adopted the staging folder into it
        if cache is None:
            return None
        try:
            local = cache.lookup_dir(sha256, total_bytes(files))
        except (OSError, ValueError):
            return None
    return local if local is not None and local.is_dir() else None


def stage_checkpoint_dir(root: Root, relative_uri: str, local_dir: str | os.PathLike[str]) -> StagedDirectory:
    """Copy ``local_dir`` into the store's staging folder for ``relative_uri``, hashing every
    file as it streams (the only step that reads ``local_dir``: the caller may change or
    delete it once this returned). Raises as ``save_checkpoint_dir``."""
    store = store_for(root)
    if not relative_uri.endswith(MANIFEST_SUFFIX):
        relative_uri += MANIFEST_SUFFIX
    sources = scan_directory(local_dir)
    staging = store.staging_folder(relative_uri)
    try:
        try:
            files = copy_tree_hashing(sources, staging, fsync=False)  # the store makes it durable
        except OSError as exc:
            raise CheckpointWriteError(f"cannot copy checkpoint directory {local_dir} for "
                                       f"{store.describe(relative_uri)}: {exc.strerror or exc}") from exc
        return StagedDirectory(store, relative_uri, staging, files)
    except BaseException:
        _remove_staging_folder(staging)
        raise


def _remove_staging_folder(staging: Path) -> None:
    from pbt_actors.storage.dir_manifest import remove_tree

    with contextlib.suppress(OSError):
        remove_tree(staging)


def read_manifest(root: Root, ref: CheckpointRef, *, use_cache: bool = True) -> list[ManifestFile]:
    """The files of the directory checkpoint ``ref``, its manifest verified and checked.

    Raises:
        CheckpointError: not a directory checkpoint, missing, tampered, or an unsafe manifest.
    """
    if not is_directory_checkpoint(ref):
        raise CheckpointError(f"checkpoint {ref.uri} is a single file, not a directory: load it with "
                              "load_checkpoint() (ctx.load_checkpoint())")
    data = store_for(root).read_verified(ref, use_cache=use_cache)
    return decode_manifest(data, f"checkpoint {ref.uri}")


def load_checkpoint_dir(root: Root, ref: CheckpointRef) -> Path:
    """The directory checkpoint ``ref`` as a local folder, every file's size and sha256 checked:
    the stored folder itself for a local root, the host's cached copy for a URL (fetched once
    per host). Read-only by convention (its files are mode 0444): copy what you change.

    Raises:
        CheckpointError: a single-file checkpoint, or anything missing, truncated or tampered.
    """
    files = read_manifest(root, ref)
    return store_for(root).fetch_folder(directory_files_folder(ref.uri), files, ref.sha256)


def delete_checkpoint(root: Root, uri: str) -> bool:
    """Delete the checkpoint ``uri`` (a file, or a directory's manifest and then its files);
    whether anything was there. Idempotent."""
    store = store_for(root)
    present = store.exists(uri)
    store.delete(uri)
    if uri.endswith(MANIFEST_SUFFIX):
        present = store.delete_folder(directory_files_folder(uri)) or present
    return present


def verify_file(root: Root, ref: CheckpointRef) -> str | None:
    """None if the file (or every file of a directory checkpoint) matches its reference, else
    the problem (for ``verify``)."""
    try:
        if is_directory_checkpoint(ref):
            files = read_manifest(root, ref, use_cache=False)
            store_for(root).verify_folder(directory_files_folder(ref.uri), files)
        else:
            store_for(root).read_verified(ref, use_cache=False)  # the stored object, not a cached copy
    except CheckpointError as exc:
        return str(exc)
    return None
