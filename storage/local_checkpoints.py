"""``LocalCheckpointStore``: checkpoints as files in a folder (one host, or a shared filesystem).

Layer 2. Today's behaviour, behind the ``CheckpointStore`` interface: a new checkpoint is
written (fsynced) under a hidden staging name in its final folder and *linked* into place
(``os.link`` fails atomically when the name exists, so two writers cannot both win, and a
name is never replaced by different content); every path is resolved inside the root
(``inside_root``), so a key from the network never reads or writes elsewhere. No cache: the
files are already local.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pbt_actors.common.atomic_files import fsync_dir, sync_filesystem
from pbt_actors.model.errors import CheckpointError, CheckpointWriteError
from pbt_actors.model.records import CheckpointRef
from pbt_actors.storage.checkpoint_store import (
    HIDDEN_PREFIX,
    CheckpointStore,
    checked_key,
    file_sha256,
    verify_bytes,
)
from pbt_actors.storage.dir_manifest import ManifestFile, remove_tree, verify_tree


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


class LocalCheckpointStore(CheckpointStore):
    """Checkpoint files under the folder ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = str(root)

    def _path(self, relative_uri: str) -> Path:
        """A clean key (``checked_key``) resolved inside the root (``inside_root``)."""
        return inside_root(self.root, checked_key(relative_uri))

    def staging_path(self, relative_uri: str) -> Path:
        target = self._path(relative_uri)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
        return target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.staging")

    def commit(self, staging: Path, relative_uri: str, size: int, sha256: str) -> None:
        try:
            target = self._path(relative_uri)
            try:
                os.link(staging, target)
                fsync_dir(target.parent)
            except FileExistsError:
                if file_sha256(target) != sha256:
                    raise CheckpointWriteError(f"checkpoint {target} exists with different content: it is never "
                                               "overwritten (another run's or attempt's file?)") from None
            except OSError as exc:
                raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)

    def read_verified(self, ref: CheckpointRef, *, use_cache: bool = True) -> bytes | bytearray:
        path = self._path(ref.uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {ref.uri} is missing (expected under {self.root})") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {ref.uri} cannot be read: {exc}") from exc
        return verify_bytes(data, ref, str(path))

    def exists(self, relative_uri: str) -> bool:
        return self._path(relative_uri).is_file()

    def delete(self, relative_uri: str) -> None:
        path = self._path(relative_uri)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointWriteError(f"cannot delete checkpoint {path}: {exc.strerror or exc}") from exc

    def list_uris(self) -> Iterator[str]:
        base = Path(self.root).resolve()
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith(HIDDEN_PREFIX))
            for name in sorted(files):
                if not name.startswith(HIDDEN_PREFIX):
                    yield (Path(folder) / name).relative_to(base).as_posix()

    def describe(self, relative_uri: str) -> str:
        return str(Path(self.root) / relative_uri)

    # --- directory checkpoints: the staging folder is renamed into place (a local rename is
    # atomic; fails when the name is taken), so the folder a manifest names is complete or absent

    def staging_folder(self, relative_uri: str) -> Path:
        target = self._path(relative_uri)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc

    def commit_folder(self, staging: Path, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> None:
        try:
            target = self._path(folder_uri)
            try:
                sync_filesystem(staging, [staging / f.path for f in files])  # the files' data, at once
                for folder in {(staging / f.path).parent for f in files} | {staging}:
                    fsync_dir(folder)
                os.rename(staging, target)
                fsync_dir(target.parent)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise CheckpointWriteError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from exc
                try:  # another writer of the same checkpoint (the folder is named by its manifest)
                    verify_tree(target, files, str(target))
                except CheckpointError as bad:
                    raise CheckpointWriteError(f"checkpoint folder {target} exists with different content: it is "
                                               f"never overwritten ({bad})") from None
        finally:
            with contextlib.suppress(OSError):
                remove_tree(staging)

    def fetch_folder(self, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> Path:
        folder = self._path(folder_uri)
        verify_tree(folder, files, str(folder))
        return folder

    def verify_folder(self, folder_uri: str, files: Sequence[ManifestFile]) -> None:
        self.fetch_folder(folder_uri, files, "")

    def delete_folder(self, folder_uri: str) -> bool:
        folder = self._path(folder_uri)
        try:
            return remove_tree(folder)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot delete checkpoint folder {folder}: {exc.strerror or exc}") from exc

    def local_path(self, relative_uri: str) -> Path | None:
        return self._path(relative_uri)
