"""Restart rules as data, and the pure decision "restart now, later, or give up".

Layer 4 core (no processes, no threads): ``RestartTracker`` is fed exit events with an
injected clock and answers with a ``RestartDecision``. The ``HostSupervisorActor`` carries it
out. pykka has no supervision of its own (pykka#42), so this is ours. The restart delay is
the one backoff of ``pbt_actors.common.backoff`` (re-exported here as ``Backoff``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pbt_actors.common.backoff import Backoff


class Restart(StrEnum):
    PERMANENT = "permanent"  # always restart (a worker slot should always be filled)
    TRANSIENT = "transient"  # restart only after an abnormal exit (non-zero, signal)
    TEMPORARY = "temporary"  # never restart


@dataclass(frozen=True)
class Intensity:
    """At most ``max_restarts`` within ``within_s`` seconds, else give up (loudly). A child
    that ran for ``stable_s`` resets both the window and the backoff (its next restart waits
    ``Backoff.delay(0)`` again)."""

    max_restarts: int = 5
    within_s: float = 60.0
    stable_s: float = 30.0


@dataclass(frozen=True)
class ChildSpec:
    """How to (re)build one child. ``factory`` returns a fresh process handle each time: a
    stopped actor or exited process is never reused."""

    id: str
    factory: Callable[[], Any]
    restart: Restart = Restart.PERMANENT


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_s: float = 0.0
    give_up: bool = False
    reason: str = ""


@dataclass
class RestartTracker:
    """Per-child restart bookkeeping (sliding window of restart times). The delay before a
    restart is ``backoff.delay(consecutive)``: the common ``pbt_actors.common.backoff.Backoff``
    (default 0.2 s doubling to 10 s, no jitter)."""

    intensity: Intensity = field(default_factory=Intensity)
    backoff: Backoff = field(default_factory=Backoff)
    restarts: deque[float] = field(default_factory=deque)
    consecutive: int = 0

    def on_exit(self, restart: Restart, exit_code: int | None, started_at: float, now: float) -> RestartDecision:
        """Decide what follows an exit with ``exit_code`` (None/negative: killed by a signal)."""
        normal = exit_code == 0
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and normal):
            return RestartDecision(False, reason="exited normally" if normal else "temporary child")
        if now - started_at >= self.intensity.stable_s:
            self.restarts.clear()
            self.consecutive = 0
        while self.restarts and now - self.restarts[0] > self.intensity.within_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.intensity.max_restarts:
            return RestartDecision(False, give_up=True, reason=(
                f"{len(self.restarts)} restarts within {self.intensity.within_s:g}s "
                f"(limit {self.intensity.max_restarts}); last exit code {exit_code}"))
        delay = self.backoff.delay(self.consecutive)
        self.consecutive += 1
        self.restarts.append(now)
        return RestartDecision(True, delay_s=delay, reason=f"exit code {exit_code}")
