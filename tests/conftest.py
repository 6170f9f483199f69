"""Shared fixtures: every test that starts processes leaves none behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.runs import kill_all_started


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    kill_all_started()
