"""The host state file: what a host supervisor publishes of its worker slots, and its readers.

Layer 4. A supervisor rewrites one small JSON file per host, atomically (temp file + rename),
on every change of a slot and at least every ``HOST_STATE_REFRESH_S`` (its heartbeat), under
``<checkpoint root>/.pbt-hosts/`` (``host_state_path``): the checkpoint root is the one folder
that every host and the controller share. ``pbt-actors status``, the dashboard and the tests
read it with ``read_host_states``. The format is its own module so that a reader needs no actor.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pbt_actors.common.atomic_files import write_atomically
from pbt_actors.storage.checkpoint_urls import local_state_folder

HOST_STATE_DIR = ".pbt-hosts"
HOST_STATE_VERSION = 1
HOST_STATE_REFRESH_S = 5.0
"""The file is rewritten at least this often (``updated_at``), and says so (``refresh_s``)."""
HOST_LOST_AFTER = 3
"""A reader calls a host that missed this many refreshes lost (``read_host_states``): its
supervisor died without saying so (SIGKILL, power, network)."""


@dataclass(frozen=True)
class ChildInfo:
    """One worker slot as the supervisor reports it (``HostSupervisor.status``, the file's ``children``)."""

    id: str
    state: str
    pid: int | None
    starts: int
    last_exit: int | None
    reason: str
    since: float = 0.0
    worker: str = ""
    """The worker id of the slot's current (or last) process (``id`` is the slot)."""


def host_state_path(checkpoint_root: str | os.PathLike[str], host: str) -> Path:
    """Where the supervisor of ``host`` publishes its children's state (see the module doc)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host) or "host"
    return local_state_folder(checkpoint_root) / HOST_STATE_DIR / f"supervisor-{safe}.json"


def write_host_state(path: Path, host: str, children: Sequence[ChildInfo], *, stopped: bool = False) -> None:
    """Publish ``children`` as ``host``'s state at ``path``, atomically.

    Raises:
        OSError: the file could not be written (a full or read-only disk).
    """
    state = {"v": HOST_STATE_VERSION, "host": host, "pid": os.getpid(), "updated_at": time.time(),
             "refresh_s": HOST_STATE_REFRESH_S, "stopped": stopped,
             "children": [asdict(info) for info in children]}
    write_atomically(path, json.dumps(state))


def read_host_states(checkpoint_root: str | os.PathLike[str], now: float | None = None) -> list[dict[str, Any]]:
    """Every host state file under ``checkpoint_root``, by host name; unreadable ones skipped.

    Each gets ``lost``: True when its supervisor did not stop but has not rewritten the file for
    ``HOST_LOST_AFTER`` of its refresh intervals (it died unannounced); then its children that
    it last saw running or waiting are in state ``lost`` (their processes were its children).
    """
    now = time.time() if now is None else now
    folder = local_state_folder(checkpoint_root) / HOST_STATE_DIR  # a URL root: this host's local folder
    states = []
    for path in sorted(folder.glob("supervisor-*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("children"), list):
            states.append(_judge_lost(state, now))
    return sorted(states, key=lambda s: str(s.get("host")))


def _judge_lost(state: dict[str, Any], now: float) -> dict[str, Any]:
    refresh, updated = state.get("refresh_s"), state.get("updated_at")
    lost = (not state.get("stopped") and isinstance(refresh, (int, float)) and isinstance(updated, (int, float))
            and now - updated > HOST_LOST_AFTER * refresh)  # files without refresh_s: no heartbeat to judge by
    state["lost"] = bool(lost)
    if lost:
        for child in state["children"]:
            if isinstance(child, dict) and child.get("state") in ("running", "waiting", "starting"):
                child["state"], child["reason"] = "lost", "its host supervisor stopped updating its state"
    return state


def describe_host_states(states: Sequence[Mapping[str, Any]], now: float | None = None) -> list[str]:
    """Human lines for ``status``: one per worker slot, with the reason when it is not running."""
    now = time.time() if now is None else now
    lines = []
    for state in states:
        age = max(0.0, now - float(state.get("updated_at", now)))
        stopped = " (supervisor stopped)" if state.get("stopped") else ""
        if state.get("lost"):
            stopped = f" (LOST: no heartbeat for {age:.0f}s; its workers are gone)"
        lines.append(f"host {state.get('host')}  supervisor pid {state.get('pid')}  updated {age:.0f}s ago{stopped}")
        for child in state["children"]:
            line = f"  worker {child.get('id')}  {child.get('state')}  starts {child.get('starts')}"
            if child.get("worker") and child.get("worker") != child.get("id"):
                line += f"  as {child.get('worker')}"
            if child.get("last_exit") is not None:
                line += f"  last exit {child.get('last_exit')}"
            if child.get("state") != "running" and child.get("reason"):
                line += f": {child.get('reason')}"
            lines.append(line)
    return lines
