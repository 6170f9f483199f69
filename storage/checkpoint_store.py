"""``CheckpointStore``: where checkpoint files live, as one interface over a local folder and
any fsspec URL (``s3://bucket/prefix``, ``gs://...``).

Layer 2 (beside the ``TrialStore``): it moves and checks *bytes*; what the bytes mean (msgpack
or ``torch.save``) is the runtime's business (``runtime/checkpoint_payloads.py``). It lives here, not in
the runtime, because three layers need it: workers write and read checkpoints (runtime), the
controller deletes the ones retention gives up (runtime), and ``verify``/``gc``/``replay``
(tools, CLI) read, list and delete them.

The contract (``tests/contract/test_checkpoint_store.py`` runs it over every implementation):
- **put-once**: ``commit`` places a complete local file under its final key; it never replaces
  different content under that key and never uses a rename on the remote side (object stores
  have none). A writer that dies before ``commit`` returned leaves nothing that is referenced:
  the controller records a ``CheckpointRef`` only from the report sent after ``commit``.
- **verified reads**: ``read_verified`` returns the bytes only after size and sha256 match the
  reference; missing, truncated or tampered objects are a ``CheckpointError``.
- ``delete`` is idempotent (a missing key is fine), ``list_uris`` yields every committed key.
Keys (``CheckpointRef.uri``) are relative to the root: ``exp/trial-000001/a1-s5-<sha16>.ckpt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError
from pbt_actors.model.records import CheckpointRef
from pbt_actors.storage.dir_manifest import ManifestFile

HIDDEN_PREFIX = "."
"""Names starting with this (staging files, ``.pbt-hosts``) are never checkpoints."""
PROBE_FOLDER = ".pbt-probe"
"""Where ``probe_writable`` puts (and removes) its small object: hidden, so never a checkpoint."""


def checked_key(relative_uri: str) -> str:
    """``relative_uri`` as a clean relative POSIX key, refused when it could leave the root.

    Raises:
        CheckpointError: empty, absolute, with ``..``, a backslash, a NUL, or a hidden name.
    """
    text = relative_uri if isinstance(relative_uri, str) else ""
    parts = text.split("/")
    if (not text or text.startswith("/") or "\x00" in text or "\\" in text
            or any(p in ("", ".", "..") for p in parts) or parts[-1].startswith(HIDDEN_PREFIX)):
        raise CheckpointError(f"checkpoint uri {str(relative_uri)[:200]!r} is not a clean relative path "
                              "inside the checkpoint root")
    return posixpath.normpath(text)


def keyed_name(relative_uri: str, sha256: str) -> str:
    """``a/b/name.ckpt`` -> ``a/b/name-<sha256[:16]>.ckpt``: the final key of a put-once write.

    With the content in the name, two writers of one key write the same bytes, so an object
    store's last-writer-wins ``put`` cannot replace a checkpoint by different content.
    """
    stem, dot, ext = relative_uri.rpartition(".")
    if not dot or "/" in ext:
        return f"{relative_uri}-{sha256[:16]}"
    return f"{stem}-{sha256[:16]}.{ext}"


def verify_bytes(data: bytes | bytearray, ref: CheckpointRef, where: str) -> bytes | bytearray:
    """``data`` if its size and sha256 match ``ref``.

    Raises:
        CheckpointError: truncated or tampered, saying what was expected.
    """
    if len(data) != ref.bytes:
        raise CheckpointError(f"checkpoint {ref.uri} is {len(data)} bytes, expected {ref.bytes} (truncated?) "
                              f"at {where}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CheckpointError(f"checkpoint {ref.uri} sha256 is {digest[:12]}…, expected {ref.sha256[:12]}… "
                              f"at {where}")
    return data


def file_sha256(path: Path) -> str | None:
    """The sha256 of a local file, streamed; None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None


class CheckpointStore(ABC):
    """Put-once checkpoint files under one root (see the module docstring for the contract)."""

    root: str
    """The root as the user gave it (a folder or a URL without credentials)."""

    @abstractmethod
    def staging_path(self, relative_uri: str) -> Path:
        """A fresh local path (its folder exists) where a new checkpoint for ``relative_uri`` is
        written before ``commit``: on the same filesystem as where ``commit`` puts it locally."""

    @abstractmethod
    def commit(self, staging: Path, relative_uri: str, size: int, sha256: str) -> None:
        """Put the complete file ``staging`` under ``relative_uri``, once; ``staging`` is consumed
        (moved into a cache, or removed) whether this succeeds or not.

        Raises:
            CheckpointError: a key that leaves the root.
            CheckpointWriteError: the write failed, or different content is already there.
        """

    @abstractmethod
    def read_verified(self, ref: CheckpointRef, *, use_cache: bool = True) -> bytes | bytearray:
        """The bytes of ``ref`` after checking size and sha256 (``CheckpointError`` otherwise).
        ``use_cache=False`` reads the stored object itself (``verify``: a good cached copy must
        not hide a damaged object that other hosts would fetch)."""

    @abstractmethod
    def exists(self, relative_uri: str) -> bool:
        """Whether an object is committed under ``relative_uri``."""

    @abstractmethod
    def delete(self, relative_uri: str) -> None:
        """Remove ``relative_uri``; a missing one is fine (idempotent, for retention and gc)."""

    @abstractmethod
    def list_uris(self) -> Iterator[str]:
        """Every committed key under the root (no staging leftovers, no host state files)."""

    # --- directory checkpoints (storage/dir_manifest.py; docs/design.md §8.6) -------------------
    # The runtime copies the directory into ``staging_folder`` while hashing it, names the files'
    # folder after the manifest's sha256, ``commit_folder``s the files, then ``commit``s the
    # manifest last: only a complete folder is ever referenced.

    @abstractmethod
    def staging_folder(self, relative_uri: str) -> Path:
        """A fresh, empty local folder into which a directory checkpoint for ``relative_uri`` is
        copied before ``commit_folder`` (on the filesystem where ``commit_folder`` puts it)."""

    @abstractmethod
    def commit_folder(self, staging: Path, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> None:
        """Put every file of ``staging`` (exactly ``files``) under ``folder_uri``, once;
        ``staging`` is consumed (kept by the host cache under ``cache_key``, moved into place,
        or removed) whether this succeeds or not.

        Raises:
            CheckpointError: a key that leaves the root.
            CheckpointWriteError: the write failed, or different content is already there.
        """

    @abstractmethod
    def fetch_folder(self, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> Path:
        """A local folder holding exactly ``files`` (each size and sha256 checked now): the
        stored folder itself for a local root, the host cache's copy for a URL.

        Raises:
            CheckpointError: a file missing, truncated or tampered.
        """

    @abstractmethod
    def verify_folder(self, folder_uri: str, files: Sequence[ManifestFile]) -> None:
        """Check every stored file of ``folder_uri`` (never a cached copy): ``verify``.

        Raises:
            CheckpointError: the first missing, truncated or tampered file.
        """

    @abstractmethod
    def delete_folder(self, folder_uri: str) -> bool:
        """Remove everything under ``folder_uri``; whether anything was there (idempotent)."""

    def probe_writable(self) -> None:
        """Put a small object under the root through the same path a checkpoint takes (staging,
        ``commit``), then delete it: the root exists and takes writes. Run before the first
        trial, so that a bucket that never existed, a deleted one or a folder that cannot be
        written stops a run at once instead of failing every trial.

        Raises:
            CheckpointWriteError: what the file system or the object store said.
        """
        key = f"{PROBE_FOLDER}/{os.getpid()}-{secrets.token_hex(6)}"
        data = b"pbt-actors: can checkpoints be written here?\n"
        staging = self.staging_path(key)
        try:
            staging.write_bytes(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise CheckpointWriteError(f"cannot write checkpoint {self.describe(key)}: {exc.strerror or exc}") from exc
        self.commit(staging, key, len(data), hashlib.sha256(data).hexdigest())
        self.delete(key)

    def describe(self, relative_uri: str) -> str:
        """Where ``relative_uri`` lives, for messages."""
        return f"{self.root.rstrip('/')}/{relative_uri}"

    def local_path(self, relative_uri: str) -> Path | None:
        """The file itself when the store is a local folder, else None."""
        return None
