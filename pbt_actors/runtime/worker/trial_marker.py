"""Which trial a worker process is running, told to its host supervisor through a small file.

Layer 4. docs/design.md §6.4: "Death while running a trial counts against that trial first." When a
worker process dies, its supervisor must know whether the death is explained by the trial it
was running (a configuration that gets its process OOM-killed, segfaults, ``os._exit``s) or
not (a broken install, a CUDA driver that cannot start): only the latter may exhaust the
host's restart intensity (``RestartTracker``). The simplest robust channel that survives a
SIGKILL is a file the worker writes before ``train`` starts and removes after it returned:
one per worker slot, ``<checkpoint root>/.pbt-hosts/running/<worker id>``, holding
``"<trial id> <attempt> <trials finished before>"`` (the last: how many trials this process ran
to their end before this one; a process that did has proven the host can train, so its death
is the trial's from the first one: issue 20, item 6). The supervisor reads (and removes) it when the process exits. A
missing or unreadable marker means "not running a trial": the death counts against the host,
which is the old, conservative behaviour. The controller keeps its own, authoritative count
(``Trial.deaths``, from ``worker_lost``); this file only feeds the host's restart rule.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

RUNNING_DIR = Path(".pbt-hosts") / "running"
"""Under the checkpoint root, beside the host state files (``host_state.HOST_STATE_DIR``)."""


def markers_dir(checkpoint_root: str | os.PathLike[str]) -> Path:
    """Under the root's host-local folder (the root itself, or a local folder for a URL root)."""
    from pbt_actors.storage.checkpoint_urls import local_state_folder

    return local_state_folder(checkpoint_root) / RUNNING_DIR


def marker_path(folder: str | os.PathLike[str], worker_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id) or "worker"
    return Path(folder) / safe


class Running(NamedTuple):
    """What a marker says: the trial and attempt a process ran, and how many trials it had
    run to their end before."""

    trial_id: int
    attempt: int
    trials_before: int = 0


def write_marker(path: Path, trial_id: int, attempt: int, trials_before: int = 0) -> None:
    """Record that the process runs ``(trial_id, attempt)`` after ``trials_before`` others
    (atomic rename; never raises)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{trial_id} {attempt} {trials_before}\n")
        os.replace(tmp, path)
    except OSError:  # no marker: a death then counts against the host, as it always did
        with contextlib.suppress(OSError):
            tmp.unlink()


def clear_marker(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def take_marker(path: Path) -> Running | None:
    """What a dead process was running, or None; the marker is removed. A marker of two
    numbers (an older worker) reads as ``trials_before`` 0."""
    try:
        text = path.read_text()
    except OSError:
        return None
    clear_marker(path)
    parts = text.split()
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return None
    return Running(*(int(p) for p in parts))
