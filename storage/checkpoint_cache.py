"""A bounded, content-addressed local cache of checkpoint files (LRU by bytes).

Layer 2. Files are named by their sha256, so a name can only ever hold one content: worker
processes of one host share the folder without locks (a new entry is written under a unique
temp name and renamed into place; two processes adding the same entry both write the same
bytes). "Recently used" is the file's mtime, refreshed on every hit; eviction removes the
oldest entries until the folder is within ``max_bytes``. A worker that just wrote a
checkpoint adopts its local file here (``adopt``), so continuing its own lineage reads it
back from disk instead of downloading what it uploaded a moment ago. An entry is still
verified by its sha256 on every read (``CheckpointStore.read_verified``): the cache is a
speed-up, never trusted.

Directory checkpoints (``storage/dir_manifest.py``) are cached whole, as folders
``dirs/<manifest sha256>.<bytes>`` moved into place by a rename once every file was verified.
A trial reads such a folder for as long as it runs, so a process holds a shared ``flock`` on
``dirs/<name>.lock`` for the last few folders it fetched (``HELD_FOLDERS``), and eviction
removes only folders it can lock exclusively: an entry in use is never deleted under a trial
(the cache may then run over its budget until the trial moves on). Lock files are left in place
(removing one races with a process about to lock it); they are empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

from pbt_actors.storage.dir_manifest import remove_tree

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIR_ENTRY = re.compile(r"^([0-9a-f]{64})\.([0-9]+)$")
STAGING = ".staging"
DIRS = "dirs"
HELD_FOLDERS = 4
"""Cached folders a process keeps locked (its current trial's parent, and a few before)."""
_held: OrderedDict[str, tuple[int, int]] = OrderedDict()
"""Lock path -> (fd, pid) of the folders this process holds (see the module docstring)."""


class CheckpointCache:
    """``folder`` holding at most about ``max_bytes`` of checkpoint files (0 disables keeping)."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        (self.folder / STAGING).mkdir(parents=True, exist_ok=True)
        (self.folder / DIRS).mkdir(exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.folder / sha256[:2] / sha256

    def new_temp(self, hint: str = "ckpt") -> Path:
        """A fresh empty file in the cache's staging folder (same filesystem as the entries)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in hint)[-80:] or "ckpt"
        fd, name = tempfile.mkstemp(prefix=f"{safe}.", suffix=".part", dir=self.folder / STAGING)
        os.close(fd)
        return Path(name)

    def lookup(self, sha256: str) -> Path | None:
        """The entry for ``sha256`` (its use time refreshed), or None."""
        path = self.path_for(sha256)
        try:
            os.utime(path)
        except OSError:
            return None
        return path

    def adopt(self, local: Path, sha256: str) -> None:
        """Move the complete file ``local`` (in this cache's staging folder) in as ``sha256``'s
        entry, then evict down to the budget. With a budget of 0 the file is just removed."""
        try:
            if self.max_bytes == 0 or local.stat().st_size > self.max_bytes:
                return
            target = self.path_for(sha256)
            target.parent.mkdir(exist_ok=True)
            os.replace(local, target)
        except OSError:
            return  # a cache that cannot keep a file is only slower
        finally:
            with contextlib.suppress(OSError):
                local.unlink()
        self.evict()

    # --- directory entries ------------------------------------------------------------------

    def dir_path(self, sha256: str, size: int) -> Path:
        if not _SHA256.match(sha256) or size < 0:
            raise ValueError(f"not a sha256 hex digest and size: {sha256[:80]!r} {size}")
        return self.folder / DIRS / f"{sha256}.{size}"

    def new_temp_dir(self, hint: str = "dir") -> Path:
        """A fresh empty folder in the cache's staging folder (same filesystem as the entries)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in hint)[-80:] or "dir"
        return Path(tempfile.mkdtemp(prefix=f"{safe}.", suffix=".part", dir=self.folder / STAGING))

    def lookup_dir(self, sha256: str, size: int) -> Path | None:
        """The cached folder (locked for this process, use time refreshed), or None."""
        path = self.dir_path(sha256, size)
        hold(path)
        try:
            os.utime(path)
        except OSError:
            return None
        return path if path.is_dir() else None

    def adopt_dir(self, local: Path, sha256: str, size: int) -> Path:
        """Move the verified folder ``local`` (in the staging folder) in as the entry of
        ``sha256`` and return the entry (another process's, when it got there first: same
        verified content). Kept even over budget: the trial needs it; eviction comes after.

        Raises:
            OSError: the folder could not be moved into the cache.
        """
        target = self.dir_path(sha256, size)
        target.parent.mkdir(exist_ok=True)
        hold(target)  # before it appears: no other process may evict it between the rename and us
        try:
            os.rename(local, target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            with contextlib.suppress(OSError):
                remove_tree(local)
        with contextlib.suppress(OSError):
            os.utime(target)
        self.evict()
        return target

    def discard_dir(self, sha256: str, size: int) -> None:
        """Drop a damaged folder entry (renamed aside first, so nobody else picks it up)."""
        with contextlib.suppress(OSError, ValueError):
            path = self.dir_path(sha256, size)
            aside = Path(tempfile.mkdtemp(prefix="discard.", dir=self.folder / STAGING)) / "entry"
            os.rename(path, aside)
            remove_tree(aside.parent)

    def discard(self, sha256: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.path_for(sha256).unlink()

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(last use, bytes, path)`` of every entry."""
        found = []
        for sub in self.folder.iterdir() if self.folder.is_dir() else []:
            if sub.name == DIRS:
                found += self._dir_entries(sub)
                continue
            if sub.name == STAGING or not sub.is_dir():
                continue
            for path in sub.iterdir():
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    @staticmethod
    def _dir_entries(dirs: Path) -> list[tuple[float, int, Path]]:
        found = []
        for path in dirs.iterdir():
            match = _DIR_ENTRY.match(path.name)
            if match:
                with contextlib.suppress(OSError):
                    found.append((path.stat().st_mtime, int(match.group(2)), path))
        return found

    def evict(self) -> None:
        """Remove least recently used entries until the total is within ``max_bytes`` (a folder
        some process holds is skipped: see the module docstring)."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path.parent.name == DIRS:
                if not self._remove_unheld(path):
                    continue
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            total -= size

    def _remove_unheld(self, path: Path) -> bool:
        """Remove the folder entry ``path`` unless a process holds it; whether it went."""
        lock = _lock_path(path)
        if str(lock) in _held:
            return False  # this process's own trial reads it
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            aside = Path(tempfile.mkdtemp(prefix="evict.", dir=self.folder / STAGING)) / "entry"
            os.rename(path, aside)
            remove_tree(aside.parent)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def _lock_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".lock")


def hold(entry: Path) -> None:
    """Take (and keep) a shared lock on ``entry``'s lock file for this process, releasing the
    oldest held one past ``HELD_FOLDERS``. Never raises: without a lock the folder is only less
    protected against eviction."""
    lock = str(_lock_path(entry))
    pid = os.getpid()
    for key, (fd, owner) in list(_held.items()):  # inherited from a parent process: not ours
        if owner != pid:
            del _held[key]
            with contextlib.suppress(OSError):
                os.close(fd)  # the parent's lock stays: it holds its own descriptor
    if lock in _held:
        _held.move_to_end(lock)
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return
    _held[lock] = (fd, pid)
    while len(_held) > HELD_FOLDERS:
        _, (old, _owner) = _held.popitem(last=False)
        with contextlib.suppress(OSError):
            os.close(old)
