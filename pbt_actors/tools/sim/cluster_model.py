"""The simulated cluster and its faults (``SimConfig``): how many workers and how fast, how long a
trial takes, how often workers are preempted, join and leave, and what the network loses. The
engine (``engine.py``) draws every event from it; its docstring says how each one plays out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    """Virtual cluster and fault model. Times are virtual seconds."""

    workers: int = 4
    speed_spread: float = 0.0
    """Standard deviation of log worker speed (0: all workers equally fast)."""
    trial_s: float = 600.0
    """Mean duration of a full trial (``steps_per_trial`` steps) on a speed-1 worker."""
    duration_cv: float = 0.1
    """Spread (sd of log) of each trial's duration around its mean."""
    preempt_rate: float = 0.0
    """Preemptions per busy worker-hour."""
    lost_notice: float = 0.5
    """Fraction of (non-graceful) preemptions a supervisor reports with ``WorkerLost``."""
    graceful: float = 0.0
    """Fraction of preemptions that save a resume checkpoint and send ``Fail`` first."""
    restart_s: float = 60.0
    """A preempted worker (or its replacement) asks for work again after this."""
    lease_s: float | None = None
    """The experiment's lease; None: ``trial_s`` (heartbeats every third of it)."""
    heartbeats: bool = True
    tick_s: float | None = None
    """Period of the controller's lease-expiry scan; None: a quarter of the lease."""
    wait_s: float | None = None
    """The controller's ``wait`` answer; None: ``trial_s / 20``."""
    park_s: float | None = None
    """How long the session holds a request for work before answering ``wait(0)``. None:
    ``wait_s``. (The real controller holds 2 s, ``session.PARK_S``; over virtual hours that
    would cost a pair of events per waiting worker every 2 s, only to catch work that appears
    without a report, failure, lost worker or lease expiry, e.g. after an early stop; holding
    ``wait_s`` keeps that cadence what a ``wait`` answer gave before.) 0: no long poll."""
    reply_loss: float = 0.0
    """Probability that the reply to a ``request_trial`` or ``report`` is lost on its way."""
    resend_s: float = 5.0
    """A worker resends a request whose reply did not come after this (same id)."""
    schedule: tuple[tuple[float, int], ...] = ()
    """``(time_s, delta)``: ``delta`` workers join (>0) or drain and leave (<0) at ``time_s``."""
    join_per_hour: float = 0.0
    leave_per_worker_hour: float = 0.0
    min_workers: int = 1
    """Poisson departures never drain the pool below this many workers."""
    max_workers: int | None = None
    """Poisson arrivals stop at this many live workers (None: no limit)."""
    seed: int = 0
    max_events: int | None = None
    """Safety stop (None: unlimited)."""

    def __post_init__(self) -> None:
        checks = [
            (self.workers >= 0, "workers must be >= 0"),
            (self.trial_s > 0, "trial_s must be > 0"),
            (self.speed_spread >= 0 and self.duration_cv >= 0, "spreads must be >= 0"),
            (self.preempt_rate >= 0, "preempt_rate must be >= 0"),
            (0 <= self.lost_notice <= 1 and 0 <= self.graceful <= 1, "probabilities must be in [0, 1]"),
            (self.restart_s >= 0, "restart_s must be >= 0"),
            (self.join_per_hour >= 0 and self.leave_per_worker_hour >= 0, "churn rates must be >= 0"),
            (self.park_s is None or self.park_s >= 0, "park_s must be >= 0"),
            (0 <= self.reply_loss < 1, "reply_loss must be in [0, 1)"),
            (self.resend_s > 0, "resend_s must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SimConfig: {message}")

    @property
    def lease(self) -> float:
        return self.lease_s if self.lease_s is not None else self.trial_s

