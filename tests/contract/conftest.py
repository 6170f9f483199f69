"""Fixtures of the store contract tests. ``store`` here is an LMDB store; ``test_trial_store``
overrides it with one parametrized over every store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path) -> Iterator[LmdbTrialStore]:
    s = LmdbTrialStore(store_path)
    try:
        yield s
    finally:
        s.close()
