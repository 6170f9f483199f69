"""The experiment definition: search space, objective, schedule and policy settings.

Layer 1 (plain data). An experiment file declares ``experiment = Experiment(...)`` next to its
``train(ctx)``. The controller stores ``to_dict()`` in the store's ``meta`` so that a restarted
controller (or the CLI reading status) knows the experiment without the file, and refuses to
resume a store with an incompatible definition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.fitness import Metric, Objective
from pbt_actors.model.space import Param, SearchSpace

PolicyName = Literal["initiator", "truncation", "random"]
POLICY_NAMES: tuple[str, ...] = ("initiator", "truncation", "random")
ExploreMode = Literal["always", "on_exploit"]
EXPLORE_MODES: tuple[str, ...] = ("always", "on_exploit")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class EarlyStop:
    """Stop a running trial early: on a NaN/inf objective metric, or when its metric at a step
    is worse than the ``quantile`` of the population's values at that same step.

    ``quantile=None`` keeps only the divergence rule. ``min_peers`` is how many other trials
    must have reported that step before the quantile rule may fire (small samples are noise).
    """

    quantile: float | None = None
    metric: str | None = None
    min_step: int = 0
    min_peers: int = 4

    def __post_init__(self) -> None:
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise ConfigError(f"early_stop.quantile must be in (0, 1), got {self.quantile}")
        if self.min_peers < 1:
            raise ConfigError("early_stop.min_peers must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "metric": self.metric, "min_step": self.min_step,
                "min_peers": self.min_peers}


@dataclass(frozen=True)
class Retention:
    """Checkpoint retention: which checkpoint files the controller may delete as the run goes.

    On by default, because a run's disk use should not grow with its number of trials: a
    checkpoint is deleted only once no pending, running or future trial can warm-start from it
    (``pbt_actors.control.retention_rules`` says exactly which those are), unless it belongs to the
    ``keep_best`` best completed trials, lies on their lineages (``keep_lineage``: every
    ancestor checkpoint, for sub-range replay; disk then grows with depth) or is pinned
    (``pbt-actors pin``). Replay from scratch needs only the schedule, never a checkpoint.
    Retention never changes a decision, so it may differ when a store is resumed.
    """

    enabled: bool = True
    keep_best: int = 3
    keep_lineage: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.keep_best, int) or isinstance(self.keep_best, bool) or self.keep_best < 0:
            raise ConfigError(f"retention.keep_best must be an integer >= 0, got {self.keep_best!r}")
        for name in ("enabled", "keep_lineage"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"retention.{name} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "keep_best": self.keep_best, "keep_lineage": self.keep_lineage}

    @classmethod
    def from_dict(cls, data: Any) -> Retention:
        if not isinstance(data, Mapping):
            raise ConfigError(f"retention must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"enabled", "keep_best", "keep_lineage"}
        if unknown:
            raise ConfigError(f"retention has unknown field(s) {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Experiment:
    """Everything the controller needs to run PBT; validated on construction.

    Args:
        name: folder-safe name; the default store is ``./pbt-runs/<name>``.
        space: ``{name: Float | Int | Discrete | Categorical | Fixed}``.
        objective: an ``Objective``, a ``Metric``, or a metric name (maximised).
        population: members per generation (the paper's population size).
        steps_per_trial: training steps of one trial (the "ready" interval).
        max_steps: a lineage ends when a child would start at or beyond this step.
        policy: ``initiator`` (the paper), ``truncation`` (Jaderberg et al.) or ``random``.
        initial: explicit hyperparameters for the first members (missing names are sampled).
        max_trials: optional hard cap on the number of trials created.
        budget_steps: optional total training steps the search may spend (equal-compute
            comparisons). A trial's ``end_step - start_step`` is charged once, when the trial
            is created (it can then always be leased); a spawn that would take the total past
            the budget is not made, so the total leased never exceeds it. A retry of a lost or
            failed attempt re-trains steps already charged and is not charged again: the steps
            actually trained are at most the budget plus retried work (``control/budget.py``).
            May change on resume (a run can be given more budget).
        budget_mode: emulate ``population`` with fewer workers (initiator policy).
        opponent_window: opponents come from the initiator's last ``W`` generations.
        crossover_prob: chance that a child crosses over with the tournament's loser.
        explore: when the initiator policy mutates a child's hyperparameters: ``"always"``
            (the paper: every child, also the winning initiator's own continuation) or
            ``"on_exploit"`` (only a child that copies the opponent who beat its initiator,
            as truncation explores only after exploiting; a winner continues unchanged).
        explore_final: mutate also in a lineage's last trial (the one ending at ``max_steps``,
            or, with ``budget_steps``, any child spawned when the budget left cannot pay for two
            more generations: the child's and one after it). Off by default: nothing later can
            judge a mutation made there, so it can only make the final population worse (a late
            jump of the learning rate diverges and stays in it; ``docs/quality.md``). ``True``
            is the paper's and Jaderberg's behaviour (every exploit explores).
        resample_prob: per-parameter chance of resampling from the prior instead of perturbing.
        truncation_quantile: bottom/top fraction for the truncation policy.
        max_attempts: a trial whose own attempts fail (an exception in ``train``) this many
            times becomes FAILED.
        max_losses: ... or one that is lost this many times (lease expiry, worker process
            died, preemption): generous, because that is the machine's fault, not the trial's.
        max_replacements: how many times a FAILED/STOPPED trial's slot is refilled.
        lease_s: a RUNNING trial with no heartbeat for this long returns to the queue.
        heartbeat_s: how often workers heartbeat (a third of the lease by default).
        trial_timeout_s: how long one attempt may train before it counts as failed and its
            worker process is restarted (a hung ``train``): seconds, ``None``/0 for no limit,
            or ``"auto"`` (the default): 10 × the median time per step of completed attempts ×
            the steps the attempt trains, at least 60 s (no limit before one completed;
            ``pbt_actors.control.deadlines``; per step, so that attempts resumed from a
            preemption checkpoint, which train only the rest of their trial, do not skew it).
        seed: every decision's randomness derives from it.
        retention: which checkpoints are deleted as the run goes (``Retention``; on by
            default, keeping the 3 best).
    """

    name: str
    space: SearchSpace | Mapping[str, Param]
    objective: Objective | Metric | str
    population: int = 8
    steps_per_trial: int = 100
    max_steps: int = 1000
    policy: PolicyName = "initiator"
    initial: Sequence[Mapping[str, Any]] = ()
    max_trials: int | None = None
    budget_steps: int | None = None
    budget_mode: bool = False
    opponent_window: int = 2
    crossover_prob: float = 0.0
    explore: ExploreMode = "always"
    explore_final: bool = False
    resample_prob: float = 0.25
    truncation_quantile: float = 0.2
    early_stop: EarlyStop | None = None
    max_attempts: int = 3
    max_losses: int = 10
    max_replacements: int = 2
    lease_s: float = 60.0
    heartbeat_s: float | None = None
    trial_timeout_s: float | str | None = "auto"
    seed: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"experiment name {self.name!r} must be 1-128 of [A-Za-z0-9_.-]")
        space = self.space if isinstance(self.space, SearchSpace) else SearchSpace(self.space)
        object.__setattr__(self, "space", space)
        objective = self.objective
        if isinstance(objective, str):
            objective = Objective.maximize(objective)
        elif isinstance(objective, Metric):
            objective = Objective(objective)
        if not isinstance(objective, Objective):
            raise ConfigError(f"objective must be an Objective, Metric or name, got {objective!r}")
        object.__setattr__(self, "objective", objective)
        object.__setattr__(self, "initial", tuple(dict(h) for h in self.initial))
        if not isinstance(self.retention, Retention):
            raise ConfigError(f"retention must be a Retention, got {self.retention!r}")
        checks = [
            (self.population >= 1, "population must be >= 1"),
            (self.steps_per_trial >= 1, "steps_per_trial must be >= 1"),
            (self.max_steps >= self.steps_per_trial, "max_steps must be >= steps_per_trial"),
            (self.policy in POLICY_NAMES, f"policy must be one of {POLICY_NAMES}, got {self.policy!r}"),
            (self.max_trials is None or self.max_trials >= 1, "max_trials must be >= 1"),
            (self.budget_steps is None or (isinstance(self.budget_steps, int)
                                           and not isinstance(self.budget_steps, bool) and self.budget_steps >= 1),
             "budget_steps must be an int >= 1 or None"),
            (self.opponent_window >= 1, "opponent_window must be >= 1"),
            (0 <= self.crossover_prob <= 1, "crossover_prob must be in [0, 1]"),
            (self.explore in EXPLORE_MODES, f"explore must be one of {EXPLORE_MODES}, got {self.explore!r}"),
            (isinstance(self.explore_final, bool), "explore_final must be true or false"),
            (0 <= self.resample_prob <= 1, "resample_prob must be in [0, 1]"),
            (0 < self.truncation_quantile <= 0.5, "truncation_quantile must be in (0, 0.5]"),
            (self.max_attempts >= 1, "max_attempts must be >= 1"),
            (self.max_losses >= 1, "max_losses must be >= 1"),
            (self.max_replacements >= 0, "max_replacements must be >= 0"),
            (self.lease_s > 0, "lease_s must be > 0"),
            (self.trial_timeout_s is None or self.trial_timeout_s == "auto"
             or (isinstance(self.trial_timeout_s, int | float) and not isinstance(self.trial_timeout_s, bool)
                 and self.trial_timeout_s >= 0), "trial_timeout_s must be seconds >= 0, None or 'auto'"),
            (len(self.initial) <= self.population, "more initial configurations than population"),
            (not self.budget_mode or self.policy == "initiator", "budget_mode needs the initiator policy"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"experiment {self.name!r}: {message}")
        if self.early_stop is not None and self.early_stop.metric is not None \
                and self.early_stop.metric not in self.objective_.names:
            raise ConfigError(f"early_stop.metric {self.early_stop.metric!r} is not an objective metric")

    # Typed accessors: after __post_init__ the unions are normalised.
    @property
    def space_(self) -> SearchSpace:
        assert isinstance(self.space, SearchSpace)
        return self.space

    @property
    def objective_(self) -> Objective:
        assert isinstance(self.objective, Objective)
        return self.objective

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 3

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``from_dict(to_dict())`` round-trips exactly."""
        return {
            "name": self.name,
            "space": self.space_.to_dict(),
            "objective": self.objective_.to_dict(),
            "population": self.population,
            "steps_per_trial": self.steps_per_trial,
            "max_steps": self.max_steps,
            "policy": self.policy,
            "initial": [dict(h) for h in self.initial],
            "max_trials": self.max_trials,
            "budget_steps": self.budget_steps,
            "budget_mode": self.budget_mode,
            "opponent_window": self.opponent_window,
            "crossover_prob": self.crossover_prob,
            "explore": self.explore,
            "explore_final": self.explore_final,
            "resample_prob": self.resample_prob,
            "truncation_quantile": self.truncation_quantile,
            "early_stop": self.early_stop.to_dict() if self.early_stop else None,
            "max_attempts": self.max_attempts,
            "max_losses": self.max_losses,
            "max_replacements": self.max_replacements,
            "lease_s": self.lease_s,
            "heartbeat_s": self.heartbeat_s,
            "trial_timeout_s": self.trial_timeout_s,
            "seed": self.seed,
            "metadata": dict(self.metadata),
            "retention": self.retention.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Experiment:
        try:
            fields = dict(data)
            fields["space"] = SearchSpace.from_dict(fields["space"])
            fields["objective"] = Objective.from_dict(fields["objective"])
            if fields.get("early_stop") is not None:
                fields["early_stop"] = EarlyStop(**fields["early_stop"])
            if "retention" in fields:  # stores written before retention existed: the default
                fields["retention"] = Retention.from_dict(fields["retention"])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"stored experiment definition is unreadable: {exc}") from exc

    def decision_fields(self) -> dict[str, Any]:
        """The settings that change decisions; a resumed store must agree on all of them."""
        d = self.to_dict()
        for volatile in ("lease_s", "heartbeat_s", "metadata", "max_trials", "budget_steps", "max_attempts",
                         "max_losses", "trial_timeout_s", "retention"):
            d.pop(volatile)
        return d
