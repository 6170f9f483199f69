"""Where a run's ``train`` lives: the experiment file's path and sha256, kept in the store.

Layer 5 (a face). The store records the experiment's *definition* (``META_EXPERIMENT``) but
the code that trains is the user's file. ``run`` and ``controller`` record the file's absolute
path and hash (``META_EXPERIMENT_FILE``) when they start, so ``replay`` can default to it
instead of requiring ``-e``, and warn when the file was edited since (a replay of changed code
need not reproduce the run).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.storage.trial_store import META_EXPERIMENT_FILE, TrialStore


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def experiment_file_record(path: str | os.PathLike[str]) -> dict[str, str]:
    """The meta entry for ``path``: ``{"path": absolute, "sha256": hex}``."""
    absolute = Path(path).resolve()
    return {"path": str(absolute), "sha256": file_sha256(absolute)}


@dataclass(frozen=True)
class RecordedFile:
    """The experiment file a store names, and whether it still is the one the run used."""

    path: Path
    recorded_sha256: str
    changed: bool

    def warning(self) -> str | None:
        """A line for stderr when the file changed since the run recorded it."""
        if not self.changed:
            return None
        return (f"warning: {self.path} changed since the run was started from it (sha256 "
                f"{self.recorded_sha256[:12]}... recorded); the replay runs the file as it is now")


def recorded_experiment_file(store: TrialStore) -> RecordedFile:
    """The experiment file recorded in ``store``, checked against the disk.

    Raises:
        ConfigError: nothing (or something malformed) is recorded, or the file is gone; the
            message says to pass ``--experiment``.
    """
    raw: Any = store.get_meta(META_EXPERIMENT_FILE)
    if raw is None:
        raise ConfigError("the store does not record its experiment file (a run started before pbt-actors "
                          "recorded it, or by the Python API): pass --experiment EXP.py")
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not isinstance(raw.get("sha256"), str):
        raise ConfigError(f"the store's record of its experiment file is malformed ({raw!r}): pass --experiment EXP.py")
    path = Path(raw["path"])
    if not path.is_file():
        raise ConfigError(f"the run's experiment file {path} is missing (moved or deleted?): pass --experiment EXP.py")
    return RecordedFile(path, raw["sha256"], file_sha256(path) != raw["sha256"])
