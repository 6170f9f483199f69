"""The on-disk layout of ``LmdbTrialStore``: database names, key encodings and value codecs.

Layer 2: imports only the data model, ``pbt_actors.model.wire`` and the (pure) index names of
``pbt_actors.storage.indexes`` (never ``lmdb``), so tools and tests can reason about keys without
opening an environment. ``INDEX_LAYOUT`` at the end says where each derived index lives.

Why this layout:

* **Big-endian fixed-width integers.** LMDB compares keys bytewise, so ``>Q`` ids (and ``>I``
  generations) sort numerically. Every index query (ids with a status, children of a parent,
  one generation) is then a prefix range scan that returns ids already in ascending order,
  costing O(result), never O(history).
* **Keys carry the data, values are empty.** Index entries (``status``, ``generations``,
  ``children``, ``uninitiated``) are sets; putting the member in the key makes membership a
  single put/delete inside the record's transaction, with no read-modify-write of a list.
* **One serializer.** Record values are ``pbt_actors.model.wire.pack(x.to_dict())``: the same bytes
  as on the wire, never pickle. Decoding failures become ``SchemaError`` naming the record, so
  a damaged disk is reported, not a crash with a raw msgpack traceback.
* **No data in the main DB.** ``open_db`` stores each named database's name as a key of the
  main DB; keeping our data in named databases only avoids collisions with those entries.

``STORE_SCHEMA_VERSION`` covers this layout (key shapes, database set, status codes). It is
independent of ``pbt_actors.model.records.SCHEMA_VERSION``, which versions the record dicts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeAlias

from pbt_actors.model import wire
from pbt_actors.model.errors import SchemaError
from pbt_actors.model.fields import is_int
from pbt_actors.model.records import CheckpointRef, Trial, TrialStatus
from pbt_actors.storage import best_index, indexes

# What py-lmdb hands back: bytes, or memoryview when a txn is opened with buffers=True.
Buf: TypeAlias = bytes | memoryview

# Bump when a key shape, a database or a status code changes; older builds refuse newer stores.
# v2 added the best index (``DB_BEST_RANKED``, ``DB_BEST_FRONT``): a v1 build writing to a v2
# store would leave it stale, so it must refuse. A v2 writer migrates a v1 store at open
# (creates and fills the index, then writes 2); v2 readers of a v1 store scan instead.
STORE_SCHEMA_VERSION: Final = 2

# --- named databases --------------------------------------------------------------------------
DB_META: Final = b"meta"  # utf-8 name -> pack(value); counters live here as "counter:<name>"
DB_TRIALS: Final = b"trials"  # id(8) -> pack(trial.to_dict())
DB_CHILDREN: Final = b"children"  # parent(8) | child(8) -> b""
DB_GENERATIONS: Final = b"generations"  # generation(4) | id(8) -> b""
DB_STATUS: Final = b"status"  # status code(1) | id(8) -> b""
DB_UNINITIATED: Final = b"uninitiated"  # id(8) -> b""
DB_CHECKPOINTS: Final = b"checkpoints"  # id(8) -> pack(checkpoint.to_dict())
DB_COMPLETED: Final = b"completed"  # generation(4) | id(8) -> b"" for COMPLETED trials (opponent pools)

DB_BEST_RANKED: Final = b"best_ranked"  # sort_key(scalar, id)(16) -> pack(oriented) (storage.best_index)
DB_BEST_FRONT: Final = b"best_front"  # same keys, Pareto objectives only: the non-dominated front

V1_DBS: Final = (DB_META, DB_TRIALS, DB_CHILDREN, DB_GENERATIONS, DB_STATUS, DB_UNINITIATED,
                 DB_CHECKPOINTS, DB_COMPLETED)
DB_FOLLOWED: Final = b"followed"  # initiator(8) | id(8) -> b"" for COMPLETED trials naming it
DB_TAILS: Final = b"tails"  # id(8) -> b"": the current population (storage.population_index)

BEST_DBS: Final = (DB_BEST_RANKED, DB_BEST_FRONT)
V2_DBS: Final = (*BEST_DBS, DB_FOLLOWED, DB_TAILS)
"""Added by schema v2: a reader of a store no v2 writer has opened yet finds them missing."""
ALL_DBS: Final = V1_DBS + V2_DBS
# Headroom over len(ALL_DBS) so a later schema can add databases without a max_dbs change.
MAX_DBS: Final = 16

SCHEMA_VERSION_KEY: Final = "schema_version"
COUNTER_PREFIX: Final = "counter:"

# Status codes are stored in index keys: never renumber or reuse one (append new statuses).
STATUS_CODES: Final[dict[TrialStatus, int]] = {
    TrialStatus.PENDING: 1,
    TrialStatus.RUNNING: 2,
    TrialStatus.COMPLETED: 3,
    TrialStatus.STOPPED: 4,
    TrialStatus.FAILED: 5,
}
CODE_STATUSES: Final[dict[int, TrialStatus]] = {code: s for s, code in STATUS_CODES.items()}

_ID = struct.Struct(">Q")
_GEN = struct.Struct(">I")
_GEN_ID = struct.Struct(">IQ")
_PAIR = struct.Struct(">QQ")
_STATUS_ID = struct.Struct(">BQ")

MAX_ID: Final = (1 << 64) - 1
MAX_GENERATION: Final = (1 << 32) - 1


# --- key encoders / decoders ------------------------------------------------------------------
def _check_id(trial_id: int) -> None:
    if not is_int(trial_id) or not 0 <= trial_id <= MAX_ID:
        raise ValueError(f"trial id {trial_id!r} is not an unsigned 64-bit integer")


def _check_generation(generation: int) -> None:
    if not is_int(generation) or not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation {generation!r} is not an unsigned 32-bit integer")


def encode_id(trial_id: int) -> bytes:
    """8-byte big-endian id: keys of ``trials``, ``uninitiated`` and ``checkpoints``."""
    _check_id(trial_id)
    return _ID.pack(trial_id)


def decode_id(key: Buf) -> int:
    return int(_ID.unpack(key)[0])


def generation_prefix(generation: int) -> bytes:
    """The 4-byte prefix every ``generations`` key of ``generation`` starts with."""
    _check_generation(generation)
    return _GEN.pack(generation)


def generation_key(generation: int, trial_id: int) -> bytes:
    _check_generation(generation)
    _check_id(trial_id)
    return _GEN_ID.pack(generation, trial_id)


def decode_generation_key(key: Buf) -> tuple[int, int]:
    """``(generation, trial_id)``."""
    generation, trial_id = _GEN_ID.unpack(key)
    return int(generation), int(trial_id)


def children_prefix(parent_id: int) -> bytes:
    return encode_id(parent_id)


def children_key(parent_id: int, child_id: int) -> bytes:
    _check_id(parent_id)
    _check_id(child_id)
    return _PAIR.pack(parent_id, child_id)


def decode_children_key(key: Buf) -> tuple[int, int]:
    """``(parent_id, child_id)``."""
    parent, child = _PAIR.unpack(key)
    return int(parent), int(child)


def status_code(status: TrialStatus) -> int:
    try:
        return STATUS_CODES[status]
    except KeyError:
        raise SchemaError(f"status {status!r} has no on-disk code; add one to "
                          f"pbt_actors.storage.schema.STATUS_CODES (and bump STORE_SCHEMA_VERSION)") from None


def status_prefix(status: TrialStatus) -> bytes:
    """The 1-byte prefix every ``status`` key of ``status`` starts with."""
    return bytes((status_code(status),))


def status_key(status: TrialStatus, trial_id: int) -> bytes:
    _check_id(trial_id)
    return _STATUS_ID.pack(status_code(status), trial_id)


def decode_status_key(key: Buf) -> tuple[TrialStatus, int]:
    """``(status, trial_id)``."""
    code, trial_id = _STATUS_ID.unpack(key)
    try:
        return CODE_STATUSES[code], int(trial_id)
    except KeyError:
        raise SchemaError(f"status index holds unknown status code {code}") from None


def uninitiated_key(_key: None, trial_id: int) -> bytes:
    """``uninitiated`` holds one set: the key is the id alone."""
    return encode_id(trial_id)


def decode_uninitiated_key(key: Buf) -> tuple[None, int]:
    return None, decode_id(key)


def checkpoint_key(trial_id: int, _ref: CheckpointRef) -> bytes:
    return encode_id(trial_id)


def decode_best_key(key: Buf) -> tuple[float, int]:
    """``(scalar, trial_id)`` of a best-index key (``best_index.sort_key``)."""
    return best_index.decode_sort_key(key)


def decode_oriented(trial_id: int, data: Buf) -> tuple[float, ...]:
    """A best-index value: the oriented metric vector.

    Raises: SchemaError naming the trial whose entry is damaged."""
    try:
        values = wire.unpack(bytes(data))
        return tuple(float(v) for v in values)
    except Exception as exc:
        raise SchemaError(f"trial {trial_id}: corrupt best index entry: {type(exc).__name__}: {exc}") from exc


def meta_key(name: str) -> bytes:
    return name.encode("utf-8")


def counter_key(name: str) -> bytes:
    """Counters live in ``meta`` as ``counter:<name>``, as in ``InMemoryTrialStore``."""
    return meta_key(COUNTER_PREFIX + name)


# --- value codecs -----------------------------------------------------------------------------
def encode_trial(trial: Trial) -> bytes:
    return wire.pack(trial.to_dict())


def decode_trial(trial_id: int, data: Buf) -> Trial:
    """Decode a ``trials`` value, checking it really is the record of ``trial_id``.

    Raises:
        SchemaError: the bytes are not a valid trial record (message names the id).
    """
    try:
        trial = Trial.from_dict(wire.unpack(bytes(data)))
    except SchemaError as exc:
        raise SchemaError(f"trial {trial_id}: corrupt record in the store: {exc}") from exc
    except Exception as exc:  # from_dict validates, but a damaged disk can surprise it
        raise SchemaError(f"trial {trial_id}: corrupt record in the store: "
                          f"{type(exc).__name__}: {exc}") from exc
    if trial.id != trial_id:
        raise SchemaError(f"trial {trial_id}: record stored under this id says id {trial.id}")
    return trial


def encode_checkpoint(ref: CheckpointRef) -> bytes:
    return wire.pack(ref.to_dict())


def decode_checkpoint(trial_id: int, data: Buf) -> CheckpointRef:
    """Raises: SchemaError naming the trial whose checkpoint entry is damaged."""
    try:
        return CheckpointRef.from_dict(wire.unpack(bytes(data)))
    except SchemaError as exc:
        raise SchemaError(f"trial {trial_id}: corrupt checkpoint index entry: {exc}") from exc
    except Exception as exc:
        raise SchemaError(f"trial {trial_id}: corrupt checkpoint index entry: "
                          f"{type(exc).__name__}: {exc}") from exc


def encode_meta(value: Any) -> bytes:
    return wire.pack(value)


def decode_meta(name: str, data: Buf) -> Any:
    """Raises: SchemaError naming the meta key whose value is damaged."""
    try:
        return wire.unpack(bytes(data))
    except SchemaError as exc:
        raise SchemaError(f"meta {name!r}: corrupt value in the store: {exc}") from exc


def decode_counter(name: str, data: Buf | None) -> int:
    if data is None:
        return 0
    value = decode_meta(COUNTER_PREFIX + name, data)
    if not is_int(value):
        raise SchemaError(f"counter {name!r} holds {type(value).__name__}, not an integer")
    return value


# --- where each derived index lives -----------------------------------------------------------
class IndexLayout(NamedTuple):
    """How one index of ``pbt_actors.storage.indexes`` is stored.

    ``key(edit key, edit item) -> bytes``; ``value(item) -> bytes`` for a map index (None: the
    set indexes store ``b""``); ``decode(key bytes) -> (edit key, item)`` for set indexes."""

    db: bytes
    key: Callable[[Any, Any], bytes]
    value: Callable[[Any], bytes] | None
    decode: Callable[[Buf], tuple[Any, int]] | None


INDEX_LAYOUT: Final[dict[str, IndexLayout]] = {
    indexes.STATUS: IndexLayout(DB_STATUS, status_key, None, decode_status_key),
    indexes.GENERATION: IndexLayout(DB_GENERATIONS, generation_key, None, decode_generation_key),
    indexes.CHILDREN: IndexLayout(DB_CHILDREN, children_key, None, decode_children_key),
    indexes.COMPLETED: IndexLayout(DB_COMPLETED, generation_key, None, decode_generation_key),
    indexes.UNINITIATED: IndexLayout(DB_UNINITIATED, uninitiated_key, None, decode_uninitiated_key),
    indexes.FOLLOWED: IndexLayout(DB_FOLLOWED, children_key, None, decode_children_key),
    indexes.CHECKPOINT: IndexLayout(DB_CHECKPOINTS, checkpoint_key, encode_checkpoint, None),
    # indexes.LEASE has no database: only the writer needs it, from memory (IndexMirror).
}
"""The on-disk home of every stored index; ``LmdbTrialStore`` applies edits through it."""
