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
)
from pbt_actors.storage.local_checkpoints import inside_root

__all__ = ["check_checkpoint_root", "delete_checkpoint", "inside_root", "load_checkpoint", "load_checkpoint_dir",
           "read_manifest", "read_verified", "save_checkpoint", "save_checkpoint_dir", "store_for", "verify_file"]

_MSGPACK_MAGIC = b"PBTMP1\n"


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through (streamed, so a
    checkpoint is never held a second time in memory to be hashed)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._sha256.update(view)
        self.size += view.nbytes
        self._handle.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
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

    Raises:
        CheckpointError: the uri escapes the root.
        CheckpointWriteError: the disk is full, the folder not writable, the upload failed,
            or different content exists under that key; no staging file is left behind.
    """
    store = store_for(root)
    payload = _msgpack_payload(state)
    staging = store.staging_path(relative_uri)
    try:
        try:
            with atomic_write(staging) as handle:
                sink = _HashingWriter(handle)
                if payload is not None:
                    sink.write(_MSGPACK_MAGIC)
                    sink.write(payload)
                else:
                    _torch_save(state, sink)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {store.describe(relative_uri)}: "
                                       f"{exc.strerror or exc}") from exc
        final = keyed_name(relative_uri, sink.hexdigest()) if keyed else relative_uri
        store.commit(staging, final, sink.size, sink.hexdigest())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staging)
    return CheckpointRef(final, sink.size, sink.hexdigest(), step)


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

    Raises:
        CheckpointError: the uri escapes the root, or the folder holds something that cannot
            be stored (a symbolic link out of it, a FIFO, more than ``MAX_FILES`` files...).
        CheckpointWriteError: the disk is full, the upload failed, or different content exists.
    """
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
        manifest = encode_manifest(files)
        sha = hashlib.sha256(manifest).hexdigest()
        final = keyed_name(relative_uri, sha)
        store.commit_folder(staging, directory_files_folder(final), files, sha)
    finally:
        _remove_staging_folder(staging)
    manifest_staging = store.staging_path(final)
    try:
        try:
            with atomic_write(manifest_staging) as handle:
                handle.write(manifest)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {store.describe(final)}: "
                                       f"{exc.strerror or exc}") from exc
        store.commit(manifest_staging, final, len(manifest), sha)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(manifest_staging)
    return CheckpointRef(final, len(manifest), sha, step)


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
