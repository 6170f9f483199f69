"""Synthetic objectives with known optima, for the simulator (layer 5).

Each objective is a tiny "training" model: a state (a tuple of floats, what a checkpoint
would hold), ``train(state, hparams, start, end)`` that advances it over steps
``[start, end)`` in O(1), ``evaluate(state)`` giving its *true* metrics, and ``observe`` that
adds evaluation noise (the noisy variants). The controller only ever sees observed metrics;
the simulator's summary scores runs by the true metrics of the trials the controller would
have picked, so selection on noise is not rewarded.

Objectives (``OBJECTIVES``):

* ``toy`` — Jaderberg et al. (2017) fig. 2. Q(θ) = 1.2 − (θ0² + θ1²); workers ascend the
  surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²) from θ = (0.9, 0.9) with step size α, so a
  member with h = (1, 0) or (0, 1) (the paper's two starting points, our first two members)
  can never pass Q = 0.39. Optimum: 1.2 (the supremum; h = (1, 1) throughout is best).
* ``curve`` — a learning curve whose best learning rate falls during training. The noisy
  quadratic model (Zhang et al., NeurIPS 2019): excess loss L evolves under SGD with learning
  rate η as ``L ← (1−η)²·L + η²·s``; a high η shrinks L fast but leaves a floor ≈ η·s/2, a low
  η has a low floor but is slow. The per-step optimum is η* = L / (L + s), i.e. η ≈ 1/t: high
  early, low late. Because L_{t+1} is increasing in L_t, that greedy schedule is optimal, and
  it gives the closed-form optimum ``L_T = s·L0 / (s + T·L0)``. Every constant η is worse
  (``best_constant`` finds the best one numerically), so a schedule beats every constant
  setting.
* ``pareto`` — two metrics, compared by dominance: the same model with a batch size b that
  divides the gradient noise (s/b) but costs b per step. ``loss`` (min) against ``cost``
  (min, the mean batch size over the steps trained). Reference front: for each constant b,
  the optimal learning-rate schedule (closed form as above); ``hypervolume`` scores a set of
  final members against it.
* ``*-noisy`` — the same with evaluation noise: additive N(0, sd) on Q, multiplicative
  exp(N(0, sd)) on losses.

Randomness: ``observe`` draws only through ``random.Random.random()`` (whose sequence Python
guarantees across versions), turned into normals by Box–Muller here, so a seed reproduces a
run on any Python.
"""

from __future__ import annotations

import dataclasses
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fitness import Goal, Metric, Objective
from pbt_actors.model.space import Discrete, Float, Param

State = tuple[float, ...]


def normal(rng: random.Random) -> float:
    """A standard normal draw from two ``random()`` calls (Box–Muller)."""
    u1 = rng.random()
    u2 = rng.random()
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


class SimObjective(ABC):
    """A synthetic training problem. Subclasses are frozen dataclasses (hashable, printable)."""

    name: str
    description: str
    metric: str  # the headline metric the summary reports
    goal: Goal
    noise: float
    steps_per_trial: int
    max_steps: int

    # --- the problem -------------------------------------------------------------------------
    @abstractmethod
    def space(self) -> dict[str, Param]:
        """The search space."""

    def objective(self) -> Objective:
        return Objective(Metric(self.metric, self.goal))

    def initial(self) -> tuple[dict[str, Any], ...]:
        """Explicit hyperparameters for the first members (the rest are sampled)."""
        return ()

    @abstractmethod
    def initial_state(self) -> State:
        """The state of an untrained model (every seed trial starts here)."""

    @abstractmethod
    def train(self, state: State, hparams: Mapping[str, Any], start_step: int, end_step: int) -> State:
        """The state after training steps ``[start_step, end_step)`` with ``hparams``."""

    @abstractmethod
    def evaluate(self, state: State) -> dict[str, float]:
        """The true (noise-free) metrics of a state."""

    def observe(self, true: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        """What a worker reports: the true metrics plus evaluation noise (none by default)."""
        return dict(true)

    # --- known answers --------------------------------------------------------------------------
    @abstractmethod
    def optimum(self) -> float:
        """The best value of ``metric`` any hyperparameter schedule can reach at ``max_steps``."""

    def better(self, a: float, b: float) -> bool:
        return a > b if self.goal == "max" else a < b

    def hypervolume(self, points: Sequence[Mapping[str, float]]) -> float | None:
        """Multi-metric objectives: the hypervolume a set of final members dominates."""
        return None

    def reference_hypervolume(self) -> float | None:
        return None

    # --- the experiment ----------------------------------------------------------------------------
    def with_schedule(self, max_steps: int | None = None, steps_per_trial: int | None = None) -> SimObjective:
        """The same problem trained for another number of steps (None: unchanged)."""
        changes = {k: v for k, v in (("max_steps", max_steps), ("steps_per_trial", steps_per_trial)) if v is not None}
        if not changes:
            return self
        result: SimObjective = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        return result

    def experiment(self, policy: str, population: int, seed: int, **overrides: Any) -> Experiment:
        """An ``Experiment`` for this problem; ``overrides`` are Experiment fields."""
        initial = self.initial()[:population]
        settings: dict[str, Any] = dict(
            name=f"sim-{self.name}-{policy}", space=self.space(), objective=self.objective(),
            population=population, steps_per_trial=self.steps_per_trial, max_steps=self.max_steps,
            policy=policy, initial=initial, seed=seed,
            metadata={"sim_objective": self.name},
        )
        if policy == "truncation":
            settings["truncation_quantile"] = 0.25 if population >= 4 else 0.5
        settings.update(overrides)
        return Experiment(**settings)


# --- Jaderberg's toy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyQuadratic(SimObjective):
    """Jaderberg et al.'s toy: Q(θ) = 1.2 − |θ|², ascended on the surrogate weighted by h."""

    name: str = "toy"
    description: str = "Jaderberg's toy quadratic Q = 1.2 - (θ0² + θ1²), surrogate weights h (max Q, optimum 1.2)"
    metric: str = "Q"
    goal: Goal = "max"
    noise: float = 0.0
    steps_per_trial: int = 4
    max_steps: int = 200
    alpha: float = 0.01

    def space(self) -> dict[str, Param]:
        return {"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)}

    def initial(self) -> tuple[dict[str, Any], ...]:
        return ({"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0})

    def initial_state(self) -> State:
        return (0.9, 0.9)

    def train(self, state: State, hparams: Mapping[str, Any], start_step: int, end_step: int) -> State:
        steps = end_step - start_step
        f0 = (1.0 - 2.0 * self.alpha * float(hparams["h0"])) ** steps
        f1 = (1.0 - 2.0 * self.alpha * float(hparams["h1"])) ** steps
        return (state[0] * f0, state[1] * f1)

    def evaluate(self, state: State) -> dict[str, float]:
        return {"Q": 1.2 - (state[0] ** 2 + state[1] ** 2)}

    def observe(self, true: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        if not self.noise:
            return dict(true)
        return {"Q": true["Q"] + self.noise * normal(rng)}

    def optimum(self) -> float:
        return 1.2


# --- the noisy quadratic model: the best learning rate falls with time --------------------------------
def nqm_steps(loss: float, lr: float, noise: float, steps: int) -> float:
    """``steps`` SGD steps of the noisy quadratic model, in closed form (O(1))."""
    a = (1.0 - lr) ** 2
    b = lr * lr * noise
    if a >= 1.0:  # lr == 0 or lr == 2: no contraction
        return loss + b * steps
    floor = b / (1.0 - a)
    return floor + (a ** steps) * (loss - floor)


def nqm_optimum(initial_loss: float, noise: float, steps: int) -> float:
    """The loss after ``steps`` with the optimal (per-step greedy) schedule η* = L / (L + s)."""
    return noise * initial_loss / (noise + steps * initial_loss)


@dataclass(frozen=True)
class LearningCurve(SimObjective):
    """The noisy quadratic model: a schedule (η ≈ 1/t) beats every constant learning rate."""

    name: str = "curve"
    description: str = ("learning curve (noisy quadratic model): best lr high early, low late "
                        "(min loss, optimum by the 1/t schedule)")
    metric: str = "loss"
    goal: Goal = "min"
    noise: float = 0.0
    steps_per_trial: int = 50
    max_steps: int = 2000
    gradient_noise: float = 0.1  # s: the gradient-noise variance
    initial_loss: float = 1.0
    lr_low: float = 1e-4
    lr_high: float = 1.0

    def space(self) -> dict[str, Param]:
        return {"lr": Float(self.lr_low, self.lr_high, log=True)}

    def initial_state(self) -> State:
        return (self.initial_loss,)

    def train(self, state: State, hparams: Mapping[str, Any], start_step: int, end_step: int) -> State:
        return (nqm_steps(state[0], float(hparams["lr"]), self.gradient_noise, end_step - start_step),)

    def evaluate(self, state: State) -> dict[str, float]:
        return {"loss": state[0]}

    def observe(self, true: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        if not self.noise:
            return dict(true)
        return {"loss": true["loss"] * math.exp(self.noise * normal(rng))}

    def optimum(self) -> float:
        return nqm_optimum(self.initial_loss, self.gradient_noise, self.max_steps)

    def constant_loss(self, lr: float) -> float:
        """Final loss when one constant ``lr`` is used for all ``max_steps``."""
        return nqm_steps(self.initial_loss, lr, self.gradient_noise, self.max_steps)

    def best_constant(self) -> tuple[float, float]:
        """``(lr, loss)`` of the best constant learning rate in the space (grid + refinement)."""
        return _best_constant(self.constant_loss, self.lr_low, self.lr_high)


def _best_constant(loss_of: Callable[[float], float], low: float, high: float) -> tuple[float, float]:
    lo, hi = math.log(low), math.log(high)
    grid = [lo + (hi - lo) * i / 400 for i in range(401)]
    best = min(grid, key=lambda x: loss_of(math.exp(x)))
    width = (hi - lo) / 400
    a, b = max(lo, best - width), min(hi, best + width)
    for _ in range(60):  # golden-section search on the bracketing cell
        c, d = b - (b - a) / 1.618033988749895, a + (b - a) / 1.618033988749895
        if loss_of(math.exp(c)) < loss_of(math.exp(d)):
            b = d
        else:
            a = c
    lr = math.exp((a + b) / 2)
    return lr, loss_of(lr)


# --- two metrics: loss against compute cost ---------------------------------------------------------------
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class ParetoCurve(SimObjective):
    """Loss (min) against cost (min): a bigger batch lowers the gradient noise but costs more.

    State: ``(L, Σ batch·steps, steps)``. ``cost`` is the mean batch size over the steps
    trained so far. Hypervolume is computed in ``(log10 loss, cost)`` against the reference
    point ``(log10 initial_loss, max batch + 1)``.
    """

    name: str = "pareto"
    description: str = "two metrics (noisy quadratic model with batch size): min loss vs min cost, Pareto"
    metric: str = "loss"
    goal: Goal = "min"
    noise: float = 0.0
    steps_per_trial: int = 50
    max_steps: int = 2000
    gradient_noise: float = 1.0
    initial_loss: float = 1.0
    lr_low: float = 1e-4
    lr_high: float = 1.0

    def space(self) -> dict[str, Param]:
        return {"lr": Float(self.lr_low, self.lr_high, log=True), "batch": Discrete(BATCHES)}

    def objective(self) -> Objective:
        return Objective([Metric("loss", "min"), Metric("cost", "min", weight=0.01)], "pareto")

    def initial_state(self) -> State:
        return (self.initial_loss, 0.0, 0.0)

    def train(self, state: State, hparams: Mapping[str, Any], start_step: int, end_step: int) -> State:
        steps = end_step - start_step
        batch = float(hparams["batch"])
        loss = nqm_steps(state[0], float(hparams["lr"]), self.gradient_noise / batch, steps)
        return (loss, state[1] + batch * steps, state[2] + steps)

    def evaluate(self, state: State) -> dict[str, float]:
        return {"loss": state[0], "cost": state[1] / state[2] if state[2] else 0.0}

    def observe(self, true: Mapping[str, float], rng: random.Random) -> dict[str, float]:
        if not self.noise:
            return dict(true)
        return {"loss": true["loss"] * math.exp(self.noise * normal(rng)), "cost": true["cost"]}

    def optimum(self) -> float:
        return nqm_optimum(self.initial_loss, self.gradient_noise / max(BATCHES), self.max_steps)

    def reference_front(self) -> list[dict[str, float]]:
        """Constant batch b with the optimal learning-rate schedule, for every b."""
        return [{"loss": nqm_optimum(self.initial_loss, self.gradient_noise / b, self.max_steps), "cost": float(b)}
                for b in BATCHES]

    def hypervolume(self, points: Sequence[Mapping[str, float]]) -> float | None:
        ref_x, ref_y = math.log10(self.initial_loss), max(BATCHES) + 1.0
        pts = sorted((math.log10(p["loss"]), p["cost"]) for p in points
                     if p["loss"] > 0 and math.log10(p["loss"]) < ref_x and p["cost"] < ref_y)
        volume, best_y = 0.0, ref_y
        for x, y in pts:  # sweep by x ascending: each point adds the strip below the best y so far
            if y < best_y:
                volume += (ref_x - x) * (best_y - y)
                best_y = y
        return volume

    def reference_hypervolume(self) -> float | None:
        return self.hypervolume(self.reference_front())


# --- registry --------------------------------------------------------------------------------------
OBJECTIVES: dict[str, Callable[[], SimObjective]] = {
    "toy": ToyQuadratic,
    "toy-noisy": lambda: ToyQuadratic(name="toy-noisy", noise=0.02),
    "curve": LearningCurve,
    "curve-noisy": lambda: LearningCurve(name="curve-noisy", noise=0.2),
    "pareto": ParetoCurve,
    "pareto-noisy": lambda: ParetoCurve(name="pareto-noisy", noise=0.2),
}


def make_objective(name: str) -> SimObjective:
    """The objective registered under ``name`` (see ``OBJECTIVES``)."""
    try:
        return OBJECTIVES[name]()
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}") from None
