"""Restart rules as data: intensity window, backoff, stable-run reset, transient/temporary."""

from __future__ import annotations

import pytest

from pbt_actors.runtime.host.restart_rules import Backoff, Intensity, Restart, RestartTracker

pytestmark = pytest.mark.timeout(10)


def tracker(max_restarts: int = 3, within_s: float = 10.0, stable_s: float = 30.0) -> RestartTracker:
    return RestartTracker(Intensity(max_restarts, within_s, stable_s), Backoff(initial_s=0.1, factor=2.0, max_s=1.0))


def test_backoff_grows_exponentially_and_is_capped() -> None:
    t = tracker(max_restarts=10, within_s=100.0)
    delays = [t.on_exit(Restart.PERMANENT, 1, started_at=0.0, now=0.1 * i).delay_s for i in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_gives_up_after_max_restarts_within_the_window() -> None:
    t = tracker(max_restarts=3, within_s=10.0)
    decisions = [t.on_exit(Restart.PERMANENT, 1, started_at=float(i), now=float(i) + 0.5) for i in range(4)]
    assert [d.restart for d in decisions] == [True, True, True, False]
    assert decisions[-1].give_up and "3 restarts within 10s" in decisions[-1].reason


def test_restarts_spread_beyond_the_window_never_give_up() -> None:
    t = tracker(max_restarts=2, within_s=5.0)
    for i in range(10):
        assert t.on_exit(Restart.PERMANENT, 1, started_at=i * 6.0, now=i * 6.0 + 1).restart


def test_a_stable_run_resets_backoff_and_intensity() -> None:
    t = tracker(max_restarts=2, within_s=1000.0, stable_s=30.0)
    t.on_exit(Restart.PERMANENT, 1, started_at=0.0, now=1.0)
    t.on_exit(Restart.PERMANENT, 1, started_at=1.0, now=2.0)
    decision = t.on_exit(Restart.PERMANENT, -9, started_at=2.0, now=100.0)  # ran 98 s: stable
    assert decision.restart and decision.delay_s == pytest.approx(0.1)


def test_transient_children_are_not_restarted_after_a_normal_exit() -> None:
    t = tracker()
    assert not t.on_exit(Restart.TRANSIENT, 0, 0.0, 1.0).restart
    assert t.on_exit(Restart.TRANSIENT, -9, 0.0, 1.0).restart
    assert not t.on_exit(Restart.TEMPORARY, 1, 0.0, 1.0).restart
