"""Trial stores: the ``TrialStore`` interface, its LMDB implementation and an in-memory twin.

Layer 2: imports only the data model (``pbt_actors.model.records`` and friends), never the shell.
"""

from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TrialStore

__all__ = ["InMemoryTrialStore", "LmdbTrialStore", "TrialStore"]


def __getattr__(name: str) -> object:
    if name == "LmdbTrialStore":  # lazy: importing lmdb is only needed for the real store
        from pbt_actors.storage.lmdb_store import LmdbTrialStore

        return LmdbTrialStore
    raise AttributeError(name)
