"""Pure rules about how long a trial attempt may run and what a death during one means.

Layer 3, no clock, no store (docs/design.md §6.5, "Trial timeouts": a lease proves the worker process
lives; a trial timeout bounds how long one attempt may train. Death while running a trial
counts against that trial first). ``ControllerCore`` applies them: ``tick`` fails attempts
past their deadline, ``worker_lost`` counts deaths.

Timeouts. ``Experiment.trial_timeout_s`` is a number of seconds, ``None``/``0`` (no timeout)
or ``"auto"`` (the default): ``AUTO_FACTOR`` × the median *time per step* of the last
``AUTO_SAMPLE`` completed attempts × the steps the running attempt itself trains, at least
``AUTO_FLOOR_S``. Before any attempt completed there is nothing to derive it from, yet a run
whose first trials all hang must still end: the first-trial ceiling is ``AUTO_FIRST_STEP_S``
(a generous default per step) × the steps the attempt trains, at least ``AUTO_FIRST_FLOOR_S``
(an experiment with longer steps sets ``trial_timeout_s`` in seconds).
Per step, not per attempt: an attempt resumed from a preemption checkpoint
trains only the rest of its trial, so its whole duration is short and would pull a median of
durations down (the simulator, with preemptions, timed out healthy full-length attempts);
per step it is as fast as any other, and a resumed attempt gets a limit for the steps it has
left (still at least the floor). A timed-out attempt is a *failure* of the trial
(``max_attempts``), not a loss.

Deaths. The first worker death during a trial is a loss (``max_losses``: it may be the
machine's fault); every further one is a failure (``max_attempts``): a configuration that
gets its process OOM-killed ends FAILED after a few attempts instead of ten losses, and the
host supervisor stops counting its deaths against the host (``runtime.host.restart_rules``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Literal

from pbt_actors.model.records import Trial

AUTO: Literal["auto"] = "auto"
AUTO_FACTOR = 10.0
AUTO_FLOOR_S = 60.0
AUTO_FIRST_STEP_S = 600.0
"""Before any attempt completed: seconds a step may take (ten minutes: generous, since no step
of this run was seen yet)."""
AUTO_FIRST_FLOOR_S = 3600.0
"""Before any attempt completed: the least an attempt gets, however few its steps (an hour)."""
AUTO_SAMPLE = 50
"""The median is taken over this many most recently completed trials."""
TIMEOUT_ERROR = "trial timeout"
"""How a timed-out attempt's error (and the ``stop`` reason its worker hears) begins."""
DEATHS_BEFORE_FAILURE = 1
"""Deaths of a trial's workers that count as losses; the ones after count as failures."""


def effective_timeout(configured: float | str | None, rates: Sequence[float], steps: int = 1) -> float | None:
    """The timeout in seconds for ``configured`` (see the module docstring), or None.

    For ``"auto"``: ``rates`` are the seconds per step of completed attempts
    (``completed_rates``) and ``steps`` those of the attempt to time (``attempt_steps``);
    with ``steps`` = 1 and whole durations as ``rates`` it is the median of durations. With no
    rates yet, the first-trial ceiling (``AUTO_FIRST_STEP_S`` per step, ``AUTO_FIRST_FLOOR_S``
    at least): a run whose first trials all hang used to wait forever.
    """
    if configured is None:
        return None
    if configured == AUTO:
        if not rates:
            return max(AUTO_FIRST_STEP_S * max(1, steps), AUTO_FIRST_FLOOR_S)
        return max(AUTO_FACTOR * statistics.median(rates) * max(1, steps), AUTO_FLOOR_S)
    limit = float(configured)
    return limit if limit > 0 else None


def attempt_steps(trial: Trial) -> int:
    """How many steps the trial's current attempt (or, once COMPLETED, its completing attempt)
    trains: from its resume checkpoint's step when it resumes one (a preempted attempt saved
    it), else from ``start_step``, to ``end_step``; at least 1."""
    first = trial.resume.step if trial.resume is not None else trial.start_step
    return max(1, trial.end_step - max(trial.start_step, min(first, trial.end_step)))


def completed_durations(trials: Iterable[Trial]) -> list[float]:
    """How long the completing attempt of each COMPLETED trial ran (from its history)."""
    out = []
    for trial in trials:
        for record in trial.history:
            if record.attempt == trial.completed_attempt and record.ended_at >= record.started_at:
                out.append(record.ended_at - record.started_at)
    return out


def completed_rates(trials: Iterable[Trial]) -> list[float]:
    """Seconds per step of the completing attempt of each COMPLETED trial: its duration over
    the steps it trained (``attempt_steps``: a resumed attempt trained only the rest). A late
    report of an older attempt that started before the resume point is counted over the fewer
    steps: a higher rate, a longer limit, never a false timeout."""
    out = []
    for trial in trials:
        steps = attempt_steps(trial)
        for record in trial.history:
            if record.attempt == trial.completed_attempt and record.ended_at >= record.started_at:
                out.append((record.ended_at - record.started_at) / steps)
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
