"""``pbt-actors pin`` while a run is live: a request file the controller applies.

Layer 4. The store has one writer (the live controller holds its lock), so ``pin`` cannot
write the pins itself while a run goes; retention would then collect a checkpoint the user
wanted to keep. Instead ``pin`` drops ``<store>/pin-requests/<trial>.pin`` (or ``.unpin``),
and the controller applies pending requests at the start of every retention plan, on its
own thread, before it decides what to delete. Collections are serialised (one plan, its
deletions, its record), so once a request file is gone no later deletion can take that
checkpoint. ``pin`` waits for the file to go and then reads the outcome from the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from pbt_actors.control.retention_rules import META_PINS, read_pins
from pbt_actors.model.errors import StoreRetry
from pbt_actors.storage.trial_store import TrialStore

log = logging.getLogger(__name__)

REQUESTS_FOLDER = "pin-requests"
MAX_STORE_RETRIES = 8


def requests_folder(store_dir: str | os.PathLike[str]) -> Path:
    return Path(store_dir) / REQUESTS_FOLDER


def write_request(store_dir: str | os.PathLike[str], trial_id: int, pin: bool) -> Path:
    """Ask the live controller to (un)pin ``trial_id``; the request file (written atomically)."""
    folder = requests_folder(store_dir)
    folder.mkdir(exist_ok=True)
    path = folder / f"{trial_id}.{'pin' if pin else 'unpin'}"
    with contextlib.suppress(FileNotFoundError):  # the opposite request, not applied yet
        (folder / f"{trial_id}.{'unpin' if pin else 'pin'}").unlink()
    temp = folder / f".{path.name}.{os.getpid()}.tmp"
    temp.write_bytes(b"")
    os.replace(temp, path)
    return path


def set_pin(store: TrialStore, trial_id: int, pin: bool) -> str | None:
    """(Un)pin ``trial_id`` in the store's pins, in one commit; None, or why it cannot be pinned."""
    if pin:
        trial = store.find_trial(trial_id)
        if trial is None:
            return f"no trial {trial_id} in the store"
        if trial.collected_at is not None:
            return f"trial {trial_id}'s checkpoint was already collected"
    pins = set(read_pins(store))
    changed = pins | {trial_id} if pin else pins - {trial_id}
    if changed != pins:
        with store.batch():
            store.put_meta(META_PINS, sorted(changed))
    return None


def apply_requests(store: TrialStore, folder: Path) -> int:
    """Apply and remove every pending request in ``folder``; how many were applied. A request
    for an unknown or collected trial is logged and removed (``pin`` reports the outcome)."""
    try:
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return 0
    applied = 0
    for name in names:
        stem, _, kind = name.partition(".")
        if not stem.isdigit() or kind not in ("pin", "unpin"):
            log.warning("retention: ignoring %s in %s (not a pin request)", name, folder)
            continue
        for _ in range(MAX_STORE_RETRIES):
            try:
                problem = set_pin(store, int(stem), kind == "pin")
                break
            except StoreRetry:
                continue
        else:
            raise RuntimeError("could not record a pin after repeated store growth")
        if problem is not None:
            log.warning("retention: %s request not applied: %s", name, problem)
        else:
            log.info("retention: trial %s %sned by request", stem, kind)
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
        applied += 1
    return applied
