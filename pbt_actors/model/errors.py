"""Every exception of pbt_actors, grouped by what the code that catches it should do.

Layer 1: imports nothing of ours, so storage and transport can raise these too.
"""

from __future__ import annotations


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


# --- storage ---------------------------------------------------------------------------------
class StoreError(PbtError):
    """The trial store cannot be used (wrong schema version, unwritable folder). Fatal for the
    process that opened it; the message says what to do."""


class StoreRetry(StoreError):
    """A write batch was rolled back because the store had to grow (LMDB map full). Nothing
    was written; the caller re-runs the whole batch, which is safe because the controller's
    handling is a deterministic function of the stored state."""


class SchemaVersionError(StoreError):
    """The store was written by a newer pbt_actors. Upgrade rather than risk corrupting it."""


class TrialNotFound(PbtError, KeyError):
    """No trial with that id. Callers holding an id from the network answer ``error``."""

    def __init__(self, trial_id: int) -> None:
        super().__init__(f"no trial with id {trial_id}")
        self.trial_id = trial_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# --- checkpoints -----------------------------------------------------------------------------
class CheckpointError(PbtError):
    """A checkpoint is missing, truncated or fails its sha256. The trial that needed it fails
    with this message (not retryable on the same parent); the policy picks another parent."""


# --- policies ----------------------------------------------------------------------------------
class PolicyError(PbtError):
    """A policy could not decide. The controller logs it and answers ``wait``; the decision is
    re-derived at the next event because policies keep no state of their own."""
