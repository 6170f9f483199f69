"""Restart rules as data, and the pure decision "restart now, later, or give up".

Layer 4 core (no processes, no threads): ``RestartTracker`` is fed exit events with an
injected clock and answers with a ``RestartDecision``. The ``HostSupervisorActor`` carries it
out. pykka has no supervision of its own (pykka#42), so this is ours. The restart delay is
the one backoff of ``pbt_actors.common.backoff`` (re-exported here as ``Backoff``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pbt_actors.common.backoff import Backoff
from pbt_actors.common.exit_codes import EXIT_TRIAL_TIMEOUT


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
    factory: Callable[..., Any]  # () -> process; (worker_id) -> process with fresh_ids
    restart: Restart = Restart.PERMANENT
    final_exit_codes: frozenset[int] = frozenset()
    """Exit codes that mean "never restart this child" (a worker of another run): the
    supervisor gives up on it at once, with the reason (``RestartDecision`` below)."""
    fresh_ids: bool = False
    """Each start of this slot gets a worker id of its own, ``<id>-<6 hex digits>``
    (``fresh_worker_id``), which the supervisor passes to ``factory`` as its one argument and
    announces to the controller: two processes, even of the same slot or of two runs sharing
    a store, never share a worker id. ``id`` stays the slot's name (logs, ``status``)."""


def fresh_worker_id(slot: str) -> str:
    """A worker id for one start of ``slot``: the slot, a dash and 6 random hex digits."""
    return f"{slot}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_s: float = 0.0
    give_up: bool = False
    reason: str = ""
    explained: bool = False
    """The death is the trial's doing, not the host's: it did not count against the intensity."""


KILLERS_REMEMBERED = 64


@dataclass
class RestartTracker:
    """Per-child restart bookkeeping (sliding window of restart times). The delay before a
    restart is ``backoff.delay(consecutive)``: the common ``pbt_actors.common.backoff.Backoff``
    (default 0.2 s doubling to 10 s, no jitter)."""

    intensity: Intensity = field(default_factory=Intensity)
    backoff: Backoff = field(default_factory=Backoff)
    restarts: deque[float] = field(default_factory=deque)
    consecutive: int = 0
    killers: deque[int] = field(default_factory=lambda: deque(maxlen=KILLERS_REMEMBERED))
    """Trials whose run ended in a death of this child (most recent last)."""

    def on_exit(self, restart: Restart, exit_code: int | None, started_at: float, now: float,
                trial: int | None = None, proven: bool = False) -> RestartDecision:
        """Decide what follows an exit with ``exit_code`` (None/negative: killed by a signal).

        ``trial``: the trial the child was running when it died (``trial_marker``), if any;
        ``proven``: the process had run other trials to their end before that one.
        docs/design.md §6.4, "death while running a trial counts against that trial": a death
        while running a trial is *explained* by it, and restarts after the first backoff delay
        without counting against the intensity, when the process had proven that this host
        can train (it finished a trial before: random deaths of 10% of attempts, out of memory
        on some configurations, never make the host give up, from the first death on), or
        when that trial killed this child before (one poison configuration). Only a fresh
        process that dies in its very first trial, a trial that never killed it before,
        counts: a host that kills every trial it starts (a broken install, a dead GPU) still
        gives up after ``max_restarts`` such deaths instead of failing the run's trials one
        by one. Deaths outside any trial count, as always. (The controller counts each death
        against its trial either way: ``control.deadlines``.)
        """
        normal = exit_code == 0
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and normal):
            return RestartDecision(False, reason="exited normally" if normal else "temporary child")
        if exit_code == EXIT_TRIAL_TIMEOUT:
            return RestartDecision(True, delay_s=self.backoff.delay(0), explained=True, reason=(
                f"exit code {exit_code}: its trial{'' if trial is None else f' {trial}'} timed out "
                f"(counted against the trial, not the host)"))
        if not normal and trial is not None:
            if proven:
                if trial not in self.killers:
                    self.killers.append(trial)  # its next kill, of a fresh process, is explained too
                return RestartDecision(True, delay_s=self.backoff.delay(0), explained=True, reason=(
                    f"exit code {exit_code} running trial {trial}, after this process had finished "
                    f"others (counted against the trial, not the host)"))
            if trial in self.killers:
                return RestartDecision(True, delay_s=self.backoff.delay(0), explained=True, reason=(
                    f"exit code {exit_code} running trial {trial}, which killed this worker before "
                    f"(counted against the trial, not the host)"))
            self.killers.append(trial)
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
