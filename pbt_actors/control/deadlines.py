"""Pure rules about how long a trial attempt may run and what a death during one means.

Layer 3, no clock, no store (DESIGN §10, "Trial deadlines": a lease proves the worker process
lives; a trial timeout bounds how long one attempt may train. Death while running a trial
counts against that trial first). ``ControllerCore`` applies them: ``tick`` fails attempts
past their deadline, ``worker_lost`` counts deaths.

Timeouts. ``Experiment.trial_timeout_s`` is a number of seconds, ``None``/``0`` (no timeout)
or ``"auto"`` (the default): ``AUTO_FACTOR`` × the median duration of the last
``AUTO_SAMPLE`` completed attempts, at least ``AUTO_FLOOR_S``; before any attempt completed
there is nothing to derive it from, and there is no timeout. A timed-out attempt is a
*failure* of the trial (``max_attempts``), not a loss.

Deaths. The first worker death during a trial is a loss (``max_losses``: it may be the
machine's fault); every further one is a failure (``max_attempts``): a configuration that
gets its process OOM-killed ends FAILED after a few attempts instead of ten losses, and the
host supervisor stops counting its deaths against the host (``runtime.restart_rules``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Literal

from pbt_actors.model.records import Trial

AUTO: Literal["auto"] = "auto"
AUTO_FACTOR = 10.0
AUTO_FLOOR_S = 60.0
AUTO_SAMPLE = 50
"""The median is taken over this many most recently completed trials."""
TIMEOUT_ERROR = "trial timeout"
"""How a timed-out attempt's error (and the ``stop`` reason its worker hears) begins."""
DEATHS_BEFORE_FAILURE = 1
"""Deaths of a trial's workers that count as losses; the ones after count as failures."""


def effective_timeout(configured: float | str | None, durations: Sequence[float]) -> float | None:
    """The timeout in seconds for ``configured`` (see the module docstring), or None."""
    if configured is None:
        return None
    if configured == AUTO:
        if not durations:
            return None
        return max(AUTO_FACTOR * statistics.median(durations), AUTO_FLOOR_S)
    limit = float(configured)
    return limit if limit > 0 else None


def completed_durations(trials: Iterable[Trial]) -> list[float]:
    """How long the completing attempt of each COMPLETED trial ran (from its history)."""
    out = []
    for trial in trials:
        for record in trial.history:
            if record.attempt == trial.completed_attempt and record.ended_at >= record.started_at:
                out.append(record.ended_at - record.started_at)
    return out


def timed_out(started_at: float | None, now: float, timeout_s: float | None) -> bool:
    """Whether an attempt started at ``started_at`` is past its deadline at ``now``."""
    return timeout_s is not None and started_at is not None and now - started_at > timeout_s


def timeout_error(attempt: int, ran_s: float, timeout_s: float) -> str:
    return f"{TIMEOUT_ERROR}: attempt {attempt} ran {ran_s:.1f}s, longer than the trial timeout of {timeout_s:g}s"


def is_timeout_error(text: str | None) -> bool:
    return text is not None and text.startswith(TIMEOUT_ERROR)


def death_is_failure(deaths: int) -> bool:
    """A trial whose workers died ``deaths`` times (this one included): is this death a
    failure of the trial (True) or a loss of the machine (False)?"""
    return deaths > DEATHS_BEFORE_FAILURE
