"""Model-based explore (``explore="model"``): a time-varying GP-UCB bandit, the PB2 idea.

Parker-Holder et al. (2020, "Provably efficient online hyperparameter optimization with
population-based bandits") replace PBT's random perturbation by a bandit: every trial that
continued a parent is one observation ``(hyperparameters, time) -> improvement`` (its fitness
minus its parent's), a Gaussian process is fitted to the recent observations, and a child
that has just exploited takes the hyperparameters that maximise the upper confidence bound
``mean + sqrt(beta_t) * sd`` at the current time. The time input lets old observations count
less (their kernel is a product with a time RBF whose length scale is fitted, like PB2's
time-varying kernel); ``beta_t`` grows with the number of observations as PB2's does.

Pure and deterministic: the data are read from the view in id order, the candidates are drawn
from the decision's generator, and scikit-learn's ``GaussianProcessRegressor`` gets a
``random_state`` drawn from it too (its optimiser starts from fixed initial values; restarts are
off). The same stored state and seed give the same proposal, so a restarted controller decides
the same. Proposals lie inside the space: numeric parameters are searched in ``[0, 1]`` per
parameter (log-scaled where the parameter is) and decoded with clipping; parameters the model
cannot order (``Categorical``, ``Fixed``) keep the winner's value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import Trial
from pbt_actors.model.space import Discrete, Float, Int, SearchSpace

DATA_GENERATIONS = 4
"""Observations come from the deciding trial's last ``DATA_GENERATIONS`` generations (PB2 fits
the recent past only; the time kernel discounts the older ones further)."""
MIN_OBSERVATIONS = 3
"""Below this many observations the bandit knows nothing: fall back to a random perturbation."""
CANDIDATES = 256
"""Uniform candidates in the unit cube (plus the winner's neighbourhood) on which UCB is maximised."""
BETA_C1, BETA_C2 = 0.2, 0.4
"""PB2's exploration weight (Ray Tune's ``pb2_utils.UCB``): ``beta_t = c1 + max(0, log(c2 n))``
with ``n`` observations, so the bound widens slowly as the data grow."""


def require_sklearn() -> None:
    """``explore="model"`` needs scikit-learn: a clear error at start, not a crash mid-run."""
    try:
        import sklearn.gaussian_process  # noqa: F401
    except ImportError as exc:  # pragma: no cover - scikit-learn is installed wherever tests run
        raise ConfigError('explore="model" needs scikit-learn (pip install scikit-learn)') from exc


def numeric_names(space: SearchSpace) -> list[str]:
    """The parameters the model searches over (ordered: Float, Int, Discrete), in space order."""
    return [name for name, p in space.items() if isinstance(p, Float | Int | Discrete)]


def encode(space: SearchSpace, names: Sequence[str], hparams: Mapping[str, Any]) -> np.ndarray:
    """``hparams``' numeric values as a point of ``[0, 1]^d`` (log axis for log parameters)."""
    out = []
    for name in names:
        param, value = space[name], hparams[name]
        if isinstance(param, Discrete):
            values = list(param.values)
            index = int(np.argmin([abs(float(v) - float(value)) for v in values]))
            out.append(index / max(1, len(values) - 1))
            continue
        assert isinstance(param, Float | Int)
        lo, hi, v = float(param.low), float(param.high), min(max(float(value), float(param.low)), float(param.high))
        if param.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        out.append((v - lo) / (hi - lo))
    return np.asarray(out, dtype=float)


def decode(space: SearchSpace, names: Sequence[str], point: np.ndarray, base: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters at ``point``: ``base`` with its numeric values replaced, inside bounds."""
    out = dict(base)
    for name, u in zip(names, np.clip(point, 0.0, 1.0), strict=True):
        param = space[name]
        if isinstance(param, Discrete):
            values = list(param.values)
            out[name] = values[round(float(u) * (len(values) - 1))]
            continue
        assert isinstance(param, Float | Int)
        lo, hi = float(param.low), float(param.high)
        if param.log:
            value = math.exp(math.log(lo) + float(u) * (math.log(hi) - math.log(lo)))
        else:
            value = lo + float(u) * (hi - lo)
        out[name] = param.clip(value)
    return out


@dataclass(frozen=True)
class Observation:
    """One continuation: its hyperparameters, generation, and fitness gain over its parent."""

    hparams: Mapping[str, Any]
    generation: int
    improvement: float


def improvement(objective: Objective, child: Trial, parent: Trial) -> float | None:
    """The child's gain in the objective's first metric over its parent (positive is better):
    ``-inf`` when the child's value is not finite but its parent's is (it diverged: the worst
    outcome, which the model must see), None when the parent's is missing or not finite."""
    metric = objective.metrics[0]
    b = parent.final.get(metric.name) if parent.final is not None else None
    if b is None or not math.isfinite(float(b)):
        return None
    a = child.final.get(metric.name) if child.final is not None else None
    if a is None or not math.isfinite(float(a)):
        return -math.inf
    gain = float(a) - float(b)
    return gain if metric.goal == "max" else -gain


def fit_and_propose(space: SearchSpace, observations: Sequence[Observation], base: Mapping[str, Any],
                    generation: int, rng: np.random.Generator) -> dict[str, Any] | None:
    """The UCB-maximising hyperparameters for a child of ``generation`` (``base``: the winner's,
    which keep their non-numeric values), or None with too few observations to model."""
    names = numeric_names(space)
    if not names or len(observations) < MIN_OBSERVATIONS:
        return None
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    with threadpool_limits(limits=1):  # matrices of ~50 rows: BLAS threads only contend (10x slower)
        return _fit_and_propose(space, names, observations, base, generation, rng)


def _fit_and_propose(space: SearchSpace, names: list[str], observations: Sequence[Observation],
                     base: Mapping[str, Any], generation: int, rng: np.random.Generator) -> dict[str, Any] | None:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    x = np.array([[*encode(space, names, o.hparams), float(o.generation)] for o in observations])
    raw = np.array([o.improvement for o in observations], dtype=float)
    finite = raw[np.isfinite(raw)]
    if len(finite) == 0:
        return None
    spread = float(np.std(finite))
    # standardised and clipped to [-2, 2] as PB2 does: one outlier must not flatten the rest;
    # a diverged child (-inf) is the worst value there is
    y = np.where(np.isfinite(raw), (raw - float(np.mean(finite))) / (spread if spread > 0 else 1.0), -2.0)
    y = np.clip(y, -2.0, 2.0)
    depth = max(1.0, float(generation))
    x[:, -1] /= depth  # time on the same unit scale as the hyperparameters
    d = len(names)
    kernel = (ConstantKernel(1.0, (1e-3, 1e3))
              * RBF(length_scale=[0.3] * d + [0.5], length_scale_bounds=(1e-2, 1e2))
              + WhiteKernel(0.1, (1e-5, 1e1)))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=False, n_restarts_optimizer=0,
                                  random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of the optimiser on tiny data sets
        gp.fit(x, y)
    around = encode(space, names, base)
    uniform = rng.random((CANDIDATES, d))
    local = np.clip(around + rng.normal(0.0, 0.1, (CANDIDATES // 4, d)), 0.0, 1.0)
    candidates = np.vstack([uniform, local])
    now = float(generation + 1) / depth
    mean, sd = gp.predict(np.hstack([candidates, np.full((len(candidates), 1), now)]), return_std=True)
    beta = BETA_C1 + max(0.0, math.log(BETA_C2 * len(observations)))
    ucb = mean + math.sqrt(beta) * sd
    return decode(space, names, candidates[int(np.argmax(ucb))], base)
