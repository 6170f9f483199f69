"""The experiment definition: search space, objective, schedule and policy settings.

Layer 1 (plain data). An experiment file declares ``experiment = Experiment(...)`` next to its
``train(ctx)``. The controller stores ``to_dict()`` in the store's ``meta`` so that a restarted
controller (or the CLI reading status) knows the experiment without the file, and refuses to
resume a store with an incompatible definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal, get_args

from msgspec import Meta

from pbt_actors.model.command_line import check_command
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.fields import NonNegativeInt, PositiveInt, StrictBool, check_fields, to_plain
from pbt_actors.model.fitness import Metric, Objective
from pbt_actors.model.space import Param, SearchSpace

PolicyName = Literal["initiator", "truncation", "random"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
ExploreMode = Literal["always", "on_exploit", "model"]
EXPLORE_MODES: tuple[str, ...] = get_args(ExploreMode)
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
"""1-128 of ``[A-Za-z0-9_.-]``, not starting with ``.``/``-``/``_``: folder-safe."""
Probability = Annotated[float, Meta(ge=0, le=1)]
Seconds = Annotated[float, Meta(ge=0)]


@dataclass(frozen=True)
class EarlyStop:
    """Stop a running trial early: on a NaN/inf objective metric, or when its metric at a step
    is worse than the ``quantile`` of the population's values at that same step.

    ``quantile=None`` keeps only the divergence rule. ``min_peers`` is how many other trials
    must have reported that step before the quantile rule may fire (small samples are noise).
    """

    quantile: Annotated[float, Meta(gt=0, lt=1)] | None = None
    metric: str | None = None
    min_step: int = 0
    min_peers: PositiveInt = 4

    def __post_init__(self) -> None:
        check_fields(self, "early_stop")

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(self)
        return plain


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

    enabled: StrictBool = True
    keep_best: NonNegativeInt = 3
    keep_lineage: StrictBool = False

    def __post_init__(self) -> None:
        check_fields(self, "retention")

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = to_plain(self)
        return plain

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
            as truncation explores only after exploiting; a winner continues unchanged) or
            ``"model"`` (as ``"on_exploit"``, but the exploiting child's hyperparameters come
            from a time-varying GP-UCB bandit over the improvements of recent generations, the
            PB2 idea: ``control/policies/model_explore.py``; needs scikit-learn). Applies to
            both the initiator and the truncation policy's exploit.
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
            the steps the attempt trains, at least 60 s (before one completed: 600 s per step,
            at least an hour;
            ``pbt_actors.control.deadlines``; per step, so that attempts resumed from a
            preemption checkpoint, which train only the rest of their trial, do not skew it).
        seed: every decision's randomness derives from it.
        retention: which checkpoints are deleted as the run goes (``Retention``; on by
            default, keeping the 3 best).
        command: run this program as each trial instead of a ``train(ctx)``: the program and
            its arguments, with ``{name}`` placeholders (``pbt_actors.model.command_line``;
            README "Any program as a trial"). An experiment file with a command needs no
            ``train``; a TOML experiment file always has one.
    """

    name: Name
    space: SearchSpace | Mapping[str, Param]
    objective: Objective | Metric | str
    population: PositiveInt = 8
    steps_per_trial: PositiveInt = 100
    max_steps: PositiveInt = 1000
    policy: PolicyName = "initiator"
    initial: Sequence[Mapping[str, Any]] = ()
    max_trials: PositiveInt | None = None
    budget_steps: PositiveInt | None = None
    budget_mode: StrictBool = False
    opponent_window: PositiveInt = 2
    crossover_prob: Probability = 0.0
    explore: ExploreMode = "always"
    explore_final: StrictBool = False
    resample_prob: Probability = 0.25
    truncation_quantile: Annotated[float, Meta(gt=0, le=0.5)] = 0.2
    early_stop: EarlyStop | None = None
    max_attempts: PositiveInt = 3
    max_losses: PositiveInt = 10
    max_replacements: NonNegativeInt = 2
    lease_s: Annotated[float, Meta(gt=0)] = 60.0
    heartbeat_s: float | None = None
    trial_timeout_s: Seconds | Literal["auto"] | None = "auto"
    seed: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)
    command: Sequence[str] | None = None

    def __post_init__(self) -> None:
        """The annotations above state each setting's own rule; the rules between settings
        and the normalisation of ``space``/``objective`` follow."""
        check_fields(self, f"experiment {self.name!r}:")
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
        if self.command is not None:
            object.__setattr__(self, "command", check_command(self.command, list(space)))
        if not isinstance(self.retention, Retention):
            raise ConfigError(f"retention must be a Retention, got {self.retention!r}")
        checks = [
            (self.max_steps >= self.steps_per_trial, "max_steps must be >= steps_per_trial"),
            (len(self.initial) <= self.population, "more initial configurations than population"),
            (self.budget_steps is None or self.budget_steps >= self.steps_per_trial,
             f"budget_steps {self.budget_steps} is smaller than one trial (steps_per_trial {self.steps_per_trial}): "
             "nothing could run"),
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
        """The stored form, in field order (``command`` only when set); ``from_dict(to_dict())``
        round-trips exactly."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        own.update(space=self.space_.to_dict(), objective=self.objective_.to_dict())
        if own["command"] is None:  # only for command trials: stores written before them read back equal
            del own["command"]
        plain: dict[str, Any] = to_plain(own)
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Experiment:
        try:
            fields = dict(data)
            fields["space"] = SearchSpace.from_dict(fields["space"])
            fields["objective"] = Objective.from_dict(fields["objective"])
            if fields.get("early_stop") is not None:
                fields["early_stop"] = EarlyStop(**fields["early_stop"])
            if fields.get("command") is None:  # stores written before command trials existed
                fields.pop("command", None)
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
        d.pop("command", None)
        return d
