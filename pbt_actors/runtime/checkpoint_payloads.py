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
from pbt_actors.model.records import CheckpointRef
from pbt_actors.storage.checkpoint_store import CheckpointStore, keyed_name
from pbt_actors.storage.checkpoint_urls import open_store
from pbt_actors.storage.local_checkpoints import inside_root

__all__ = ["StagedCheckpoint", "check_checkpoint_root", "inside_root", "load_checkpoint", "read_verified",
           "save_checkpoint", "stage_checkpoint", "store_for", "verify_file"]

_MSGPACK_MAGIC = b"PBTMP1\n"


_PARALLEL_HASH_BYTES = 1 << 20
"""Chunks at least this large are hashed on a helper thread while the file write goes on (both
release the GIL): a large tensor's bytes are hashed and written at once instead of in turn."""


def _hasher() -> concurrent.futures.ThreadPoolExecutor:
    return _hasher_of(os.getpid())  # a forked child gets its own (the parent's thread is not in it)


@functools.lru_cache(maxsize=1)
def _hasher_of(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash")


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through (streamed, so a
    checkpoint is never held a second time in memory to be hashed)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._hashing: concurrent.futures.Future[None] | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._wait_hash()  # in order: the previous chunk's hash first
        if view.nbytes >= _PARALLEL_HASH_BYTES:
            self._hashing = _hasher().submit(self._sha256.update, view)  # ``view`` stays alive meanwhile
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
        with atomic_write(staging) as handle:
            sink = _HashingWriter(handle)
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
    """Verify, then decode (msgpack, or torch with ``weights_only=True``)."""
    return _decode(read_verified(root, ref), ref.uri)


def verify_file(root: Root, ref: CheckpointRef) -> str | None:
    """None if the file matches its reference, else the problem (for ``verify``)."""
    try:
        store_for(root).read_verified(ref, use_cache=False)  # the stored object, not a cached copy
    except CheckpointError as exc:
        return str(exc)
    return None
