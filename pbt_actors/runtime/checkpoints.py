"""Checkpoint files: atomic writes, sha256 on the way in, verification before every load.

Layer 4 helper. A checkpoint is written by a worker to a temp name in the target folder,
fsynced, renamed (atomic on POSIX) and the folder fsynced; its sha256 and size go into the
``CheckpointRef`` the controller stores. A child verifies size and hash *before* parsing, so a
truncated or tampered file is a clear ``CheckpointError`` rather than a crash deep in torch.

Two payload formats, chosen by content: plain data (dicts, lists, numbers, strings: no
torch needed, e.g. the toy example) is msgpack; anything holding tensors goes through
``torch.save`` and is loaded with ``weights_only=True``. Never pickle.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from pbt_actors.model import wire
from pbt_actors.model.errors import CheckpointError, WireError
from pbt_actors.model.records import CheckpointRef

_MSGPACK_MAGIC = b"PBTMP1\n"


def _encode(state: Any) -> bytes:
    try:
        return _MSGPACK_MAGIC + wire.pack(state)
    except WireError:
        pass
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - only without torch
        raise CheckpointError(f"state of type {type(state).__name__} needs torch to be saved") from exc
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


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


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be *written* (disk full, folder not writable, I/O error).

    Unlike a damaged checkpoint that cannot be *read* (which no retry of the same trial can
    fix), this says nothing about the trial: the worker reports it as a retryable failure, so
    the trial is re-queued (up to ``max_attempts``) and may succeed once space is freed or on
    another host. Nothing is left behind: no temp file, no file under the final name.
    """


def save_checkpoint(root: str | os.PathLike[str], relative_uri: str, state: Any, step: int) -> CheckpointRef:
    """Write ``state`` atomically under ``root/relative_uri`` and describe it.

    Raises:
        CheckpointWriteError: the disk is full or the folder is not writable; no file is left
            behind (neither the temp file nor one under the final name).
    """
    data = _encode(state)
    target = Path(root) / relative_uri
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
    return CheckpointRef(relative_uri, len(data), hashlib.sha256(data).hexdigest(), step)


def read_verified(root: str | os.PathLike[str], ref: CheckpointRef) -> bytes:
    """The checkpoint's bytes after checking presence, size and sha256.

    Raises:
        CheckpointError: missing, truncated, or hash mismatch (with what was expected).
    """
    path = Path(root) / ref.uri
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
