"""Fault-suite fixtures: processes started with ``harness.spawn`` (not the CLI, whose processes
``tests/conftest.py`` already cleans up) are killed with their process group after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import kill_spawned


@pytest.fixture(autouse=True)
def _no_leftover_spawned_processes() -> Iterator[None]:
    yield
    kill_spawned()
