"""One writer per store (``docs/design.md`` §8.4): an exclusive ``flock`` on a file in
the store folder, held until the writer closes (or dies: the kernel drops it).

Layer 2. The lock file carries the holder's pid and host, so the next writer's error names it.
Readers never take the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import suppress
from pathlib import Path
from typing import Final

from pbt_actors.model.errors import StoreError, StoreLocked

WRITER_LOCK: Final = "writer.lock"
"""The writer's lock file in the store folder."""


def take_writer_lock(folder: Path) -> int:
    """Take the lock of the store in ``folder``; returns the file descriptor holding it.

    Raises:
        StoreLocked: another open writer (this process or another) holds it.
        StoreError: the lock file cannot be created.
    """
    lock_path = folder / WRITER_LOCK
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create the store's lock file {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            holder = {}
        os.close(fd)
        if not isinstance(holder, dict):
            holder = {}
        raise StoreLocked(f"store {folder} is in use by pid {holder.get('pid', '?')} on host "
                          f"{holder.get('host', '?')} (one controller per store: stop that one, or "
                          f"choose another --store)") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    except OSError:
        pass  # the lock holds without its note (a full disk): the message says "pid ?"
    return fd


def release_writer_lock(fd: int | None) -> None:
    """Drop the lock taken by ``take_writer_lock`` (None: nothing held)."""
    if fd is not None:
        with suppress(OSError):
            os.close(fd)
