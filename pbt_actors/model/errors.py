"""Every exception of pbt_actors, grouped by what the code that catches it should do.

Layer 1: imports nothing of ours, so storage and transport can raise these too.
"""

from __future__ import annotations

from typing import Any


class PbtError(Exception):
    """Base of all our errors; catching it means "a pbt_actors problem, not a bug of yours"."""


# --- user configuration: fix the experiment file, never retry -----------------------------
class ConfigError(PbtError):
    """The experiment definition is invalid. The catcher reports it to the user and exits."""


class SpaceError(ConfigError):
    """A search-space parameter is invalid; the message always names the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter {name!r}: {problem}")
        self.name = name
        self.problem = problem


# --- data crossing a boundary (network, disk): reject this input, keep running -------------
class SchemaError(PbtError):
    """A record or message does not have the expected shape. The catcher rejects that one
    input (answers ``error`` or skips it), logs it, and carries on."""


class WireError(SchemaError):
    """Bytes could not be decoded as msgpack within the size and depth limits."""


ERROR_CODES = (
    "malformed",  # undecodable bytes or a body that fails its schema
    "version",  # envelope protocol version not supported
    "unknown_type",  # a type tag this controller does not know
    "unknown_trial",  # trial id not in the store
    "bad_attempt",  # attempt number from the future
    "not_leaseholder",  # the sender does not hold the trial's lease (forged worker id)
    "internal",  # the controller failed to handle it; the request may be retried
    "wrong_run",  # the sender expects another run (store) than this controller's: it must exit
    "host_taken",  # another live supervisor said hello with this host id
    "not_owner",  # worker_lost for a worker that the sender's host does not own
)
"""The machine-readable codes of an ``error`` reply (``pbt_actors.model.protocol.Error``; docs/design.md §5).
Defined here, below the transport, because ``ProtocolError`` checks its code against them."""


class ProtocolError(SchemaError):
    """A frame that is not a valid protocol envelope (raised by ``pbt_actors.transport.codec.decode``).

    ``code`` is one of ``ERROR_CODES`` (the codec uses ``malformed``, ``version`` or
    ``unknown_type``); ``request_id`` is the envelope's id when it could be read. The catcher
    answers ``error(code, text)`` under that id, or drops the frame when it is ``None``.
    """

    def __init__(self, code: str, text: str, request_id: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable for pykka/multiprocessing logs
        return (type(self), (self.code, self.text, self.request_id))


# --- the network: the peer did not answer; the caller decides to resend later or give up ------
class RequestTimeout(PbtError):
    """No reply with the request's id arrived after the initial send and ``retries`` resends
    (``pbt_actors.transport.endpoints.WorkerEndpoint.request``). The catcher tries again later (a worker
    with a report), or carries on without the answer (a heartbeat, a ``worker_lost`` notice)."""

    def __init__(self, message_type: str, request_id: int, sends: int, waited_s: float) -> None:
        super().__init__(f"no reply to {message_type} (request id {request_id}) after {sends} send(s) "
                         f"over {waited_s:.1f}s")
        self.message_type = message_type
        self.request_id = request_id
        self.sends = sends
        self.waited_s = waited_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message_type, self.request_id, self.sends, self.waited_s))


class MessageTooLarge(PbtError):
    """A message whose encoding exceeds the frame limit (``MAXMSGSIZE``), refused before it was
    sent (``pbt_actors.transport.endpoints.WorkerEndpoint.request``): the peer would drop it
    silently and a resend could never succeed. The catcher sends something smaller instead
    (a worker: a ``fail`` of the trial saying so)."""

    def __init__(self, message_type: str, size: int, limit: int) -> None:
        super().__init__(f"{message_type} message is {size} bytes encoded, over the {limit}-byte frame "
                         f"limit; it was not sent")
        self.message_type = message_type
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message_type, self.size, self.limit))


# --- storage ---------------------------------------------------------------------------------
class StoreError(PbtError):
    """The trial store cannot be used (wrong schema version, unwritable folder). Fatal for the
    process that opened it; the message says what to do."""


class StoreRetry(StoreError):
    """A write batch was rolled back because the store had to grow (LMDB map full). Nothing
    was written; the caller re-runs the whole batch, which is safe because the controller's
    handling is a deterministic function of the stored state."""


class StoreFullRetry(StoreRetry):
    """The LMDB map filled up inside ``batch()`` (``pbt_actors.storage.lmdb_store``).

    Raised after the batch's transaction was aborted (nothing of it was written) and the map
    was grown. Re-run the whole batch; the next attempt has twice the room.
    """


class StoreFull(StoreError):
    """The store's disk is full (or failing): an LMDB commit or flush failed with ENOSPC or
    EIO (``pbt_actors.storage.lmdb_store``). The transaction was aborted, so the store holds
    its last committed state. Fatal for the controller, which stops serving; the CLI exits with
    ``EXIT_STORE_FULL`` and a rerun with space resumes from the store."""


class SchemaVersionError(StoreError):
    """The store was written by a newer pbt_actors. Upgrade rather than risk corrupting it."""


class TrialNotFound(PbtError, KeyError):
    """No trial with that id. Callers holding an id from the network answer ``error``."""

    def __init__(self, trial_id: int) -> None:
        super().__init__(f"no trial with id {trial_id}")
        self.trial_id = trial_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# --- checkpoints: the trial fails; whether it is retried depends on which ------------------------
class CheckpointError(PbtError):
    """A checkpoint cannot be *read*: missing, truncated or failing its sha256 (or a state that
    cannot be encoded at all). The trial that needed it fails for good (``fail`` with
    ``retryable=False``: no retry of the same spec can fix it); the policy picks another parent."""


class CheckpointWriteError(PbtError):
    """A checkpoint could not be *written* (disk full, folder not writable, I/O error).

    It says nothing about the trial, so (unlike ``CheckpointError``, deliberately not its
    base) the trial fails *retryably*: it is re-queued (up to ``max_attempts``) and may
    succeed once space is freed or on another host. Nothing is left behind: no temp file, no
    file under the final name.
    """


class CheckpointStoreFault(PbtError):
    """The checkpoint store cannot be written: its disk is full, its bucket was deleted or never
    existed, its folder is not writable. An infrastructure fault, not a training failure: the
    trial whose save failed is re-queued uncharged, the controller stops serving, and ``run`` /
    ``controller`` / ``worker`` exit with ``EXIT_CHECKPOINT_STORE``; fix the store and run the
    same command again to resume."""


# --- faces (CLI, replay, lineage): tell the user what is wrong and exit non-zero ------------------
class LineageError(PbtError):
    """The store's trial graph cannot give a lineage (a dangling parent, a cycle, a gap in the
    step ranges) or a schedule file is unreadable. The message names the trial or field."""


class ReplayError(PbtError):
    """A replay cannot start or continue: a bad step range, a missing start checkpoint, or a
    segment whose ``train`` raised or saved nothing. The message names the segment."""


# --- worker processes --------------------------------------------------------------------------
class ZygoteError(PbtError):
    """The fork server (``runtime/host/zygote.py``) cannot start (threads already running, CUDA
    initialised) or cannot fork a worker (it died, or fork failed). The catcher starts the
    worker as a fresh interpreter instead and says so once."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock (one writer per store: docs/design.md §8.4). The
    message names its pid and host; stop that one, or choose another ``--store``."""
