"""The one retry backoff: exponential, capped, optionally jittered.

Layer 0: imports nothing of ours. Every retry in pbt_actors waits ``Backoff.delay(n)`` before
its n-th retry (0-based): the supervisor before restarting a crashed worker
(``runtime/host/restart_rules.py``), a worker's DEALER before resending an unanswered request
(``transport/endpoints.py``), and a worker before sending again a report the controller
could not apply (``runtime/worker/worker_client.py``).

Pure: no sleeping and no clock here. The caller waits the delay the way that suits it (an
``Event.wait`` that a preemption interrupts, a socket poll, a scheduled restart), which is
also what makes it testable with an injected clock. Jitter takes its randomness from an
injectable ``rand`` (``random.random`` by default).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (0-based): ``initial_s * factor**n``, capped at ``max_s``.

    ``jitter`` in ``[0, 1]`` spreads retries of many clients: the delay is then drawn
    uniformly from ``[d * (1 - jitter), d]`` where ``d`` is the un-jittered delay (so the cap is
    never exceeded). ``jitter=0`` (the default) is exact and deterministic.
    """

    initial_s: float = 0.2
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError("backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be in [0, 1]")

    def delay(self, n: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``n`` (negative ``n`` counts as 0)."""
        try:
            base = float(min(self.max_s, self.initial_s * self.factor ** max(0, n)))
        except OverflowError:  # factor**n beyond a float: long past the cap
            base = float(self.max_s) if self.initial_s > 0 else 0.0
        if self.jitter:
            base *= 1.0 - self.jitter * rand()
        return base
