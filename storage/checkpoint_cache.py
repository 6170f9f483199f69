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
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
STAGING = ".staging"


class CheckpointCache:
    """``folder`` holding at most about ``max_bytes`` of checkpoint files (0 disables keeping)."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        (self.folder / STAGING).mkdir(parents=True, exist_ok=True)

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

    def discard(self, sha256: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.path_for(sha256).unlink()

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(last use, bytes, path)`` of every entry."""
        found = []
        for sub in self.folder.iterdir() if self.folder.is_dir() else []:
            if sub.name == STAGING or not sub.is_dir():
                continue
            for path in sub.iterdir():
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    def evict(self) -> None:
        """Remove least recently used entries until the total is within ``max_bytes``."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size
