"""Every command-trial attempt's output, kept next to its trial's checkpoints.

Layer 4. The tail of an attempt's stdout and stderr (``process.TAIL_BYTES`` of each) is put,
once, under the trial's own prefix in the checkpoint root (a folder or object storage):
``<experiment>/trial-000012/output-a2.log``. There every host can write it and every face can
read it (``lineage``, ``status``, the dashboard), with no new store record or message; retention
deletes only the checkpoints reports name, so the logs stay (a few hundred KB per trial at most).
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError
from pbt_actors.model.records import output_log_uri
from pbt_actors.runtime.checkpoint_payloads import Root, store_for

MAX_LOG_BYTES = 256 * 1024
"""A log read back is cut to its last this many bytes (a hand-placed file could be anything)."""


def output_uri(experiment: str, trial_id: int, attempt: int) -> str:
    return output_log_uri(experiment, trial_id, attempt)


def format_output(stdout: str, stderr: str, header: str) -> str:
    """The log's text: a header line, then both streams' tails."""
    return f"{header}\n--- stdout (tail) ---\n{stdout}\n--- stderr (tail) ---\n{stderr}\n"


def save_output(root: Root, experiment: str, trial_id: int, attempt: int, text: str) -> str | None:
    """Put ``text`` as the attempt's log; its uri, or None when it could not be written
    (logged: a lost log must never fail a trial)."""
    import logging

    uri = output_uri(experiment, trial_id, attempt)
    data = text.encode("utf-8", errors="replace")
    try:
        store = store_for(root)
        if store.exists(uri):  # put-once: an attempt's log is written by that attempt only
            return uri
        staging = store.staging_path(uri)
        try:
            staging.write_bytes(data)
            store.commit(staging, uri, len(data), hashlib.sha256(data).hexdigest())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)
    except (OSError, CheckpointError, CheckpointWriteError) as exc:
        logging.getLogger(__name__).warning("trial %d attempt %d: its output log could not be kept: %s",
                                            trial_id, attempt, exc)
        return None
    return uri


def read_output(root: Root, experiment: str, trial_id: int, attempt: int) -> str | None:
    """The attempt's log (its last ``MAX_LOG_BYTES``), or None when there is none."""
    uri = output_uri(experiment, trial_id, attempt)
    try:
        store = store_for(root)
        local = store.local_path(uri)
        if local is not None:
            if not local.is_file():
                return None
            with open(local, "rb") as f:
                f.seek(max(0, local.stat().st_size - MAX_LOG_BYTES))
                data = f.read()
        else:
            fs = getattr(store, "fs", None)
            object_path = getattr(store, "object_path", None)
            if fs is None or object_path is None or not store.exists(uri):
                return None
            data = fs.cat_file(object_path(uri))[-MAX_LOG_BYTES:]
    except (OSError, CheckpointError):
        return None
    return bytes(data).decode("utf-8", errors="replace")


__all__ = ["MAX_LOG_BYTES", "format_output", "output_uri", "read_output", "save_output"]
