"""Checkpoint files: atomic writes, sha256 on the way in, verification before every load.

Layer 4 helper. A checkpoint is written by a worker with
``pbt_actors.common.atomic_files.atomic_write`` (a temp name in the target folder, fsynced,
renamed, the folder fsynced), hashed with sha256 as it streams into the file; its sha256 and
size go into the ``CheckpointRef`` the controller stores. A child verifies size and hash
*before* parsing, so a truncated or tampered file is a clear ``CheckpointError`` rather than a
crash deep in torch.

Two payload formats, chosen by content: plain data (dicts, lists, numbers, strings: no
torch needed, e.g. the toy example) is msgpack; anything holding tensors goes through
``torch.save`` and is loaded with ``weights_only=True``. Never pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import IO, Any, cast

from pbt_actors.common.atomic_files import atomic_write, fsync_dir
from pbt_actors.model import wire
from pbt_actors.model.errors import CheckpointError, CheckpointWriteError, WireError
from pbt_actors.model.records import CheckpointRef

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


def _decode(data: bytes, where: str) -> Any:
    if data.startswith(_MSGPACK_MAGIC):
        try:
            return wire.unpack(data[len(_MSGPACK_MAGIC):], max_bytes=len(data), max_depth=64)
        except WireError as exc:
            raise CheckpointError(f"checkpoint {where} is not valid msgpack: {exc}") from exc
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {where} could not be loaded safely: {exc}") from exc


def inside_root(root: str | os.PathLike[str], relative_uri: str) -> Path:
    """``root/relative_uri``, refused unless it stays inside ``root`` (after resolving ``..``
    and symbolic links): a name from the network must never write or read elsewhere.

    Raises:
        CheckpointError: an absolute uri, or one that escapes the root.
    """
    base = Path(root).resolve()
    if not relative_uri or os.path.isabs(relative_uri) or "\x00" in relative_uri:
        raise CheckpointError(f"checkpoint uri {relative_uri[:200]!r} is not a relative path")
    target = (base / relative_uri).resolve()
    if target == base or not target.is_relative_to(base):
        raise CheckpointError(f"checkpoint uri {relative_uri[:200]!r} escapes the checkpoint root {base}")
    return target


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def save_checkpoint(root: str | os.PathLike[str], relative_uri: str, state: Any, step: int) -> CheckpointRef:
    """Write ``state`` atomically under ``root/relative_uri`` and describe it.

    Put-once: a file already under that name is never replaced by different content (it may
    be a completed trial's checkpoint that children load); writing the same bytes again is a
    no-op. The new file is written under a temp name and linked into place (``os.link`` fails
    if the name exists, atomically), so two writers cannot both win.

    Raises:
        CheckpointError: the uri escapes the root (``inside_root``).
        CheckpointWriteError: the disk is full or the folder is not writable, or a file with
            different content exists under that name; no file is left behind (neither the
            temp file nor one under the final name).
    """
    payload = _msgpack_payload(state)
    target = inside_root(root, relative_uri)
    staging = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.staging")
    try:
        with atomic_write(staging) as handle:
            sink = _HashingWriter(handle)
            if payload is not None:
                sink.write(_MSGPACK_MAGIC)
                sink.write(payload)
            else:
                _torch_save(state, sink)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
    try:
        try:
            os.link(staging, target)
            fsync_dir(target.parent)
        except FileExistsError:
            if _file_sha256(target) != sink.hexdigest():
                raise CheckpointWriteError(f"checkpoint {target} exists with different content: it is never "
                                           "overwritten (another run's or attempt's file?)") from None
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staging)
    return CheckpointRef(relative_uri, sink.size, sink.hexdigest(), step)


def read_verified(root: str | os.PathLike[str], ref: CheckpointRef) -> bytes:
    """The checkpoint's bytes after checking presence, size and sha256.

    Raises:
        CheckpointError: missing, truncated, or hash mismatch (with what was expected).
    """
    path = inside_root(root, ref.uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ref.uri} is missing (expected under {root})") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {ref.uri} cannot be read: {exc}") from exc
    if len(data) != ref.bytes:
        raise CheckpointError(f"checkpoint {ref.uri} is {len(data)} bytes, expected {ref.bytes} (truncated?)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CheckpointError(f"checkpoint {ref.uri} sha256 is {digest[:12]}…, expected {ref.sha256[:12]}…")
    return data


def load_checkpoint(root: str | os.PathLike[str], ref: CheckpointRef) -> Any:
    """Verify, then decode (msgpack, or torch with ``weights_only=True``)."""
    return _decode(read_verified(root, ref), ref.uri)


def verify_file(root: str | os.PathLike[str], ref: CheckpointRef) -> str | None:
    """None if the file matches its reference, else the problem (for ``verify``)."""
    try:
        read_verified(root, ref)
    except CheckpointError as exc:
        return str(exc)
    return None
