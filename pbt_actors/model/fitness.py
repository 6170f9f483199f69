"""Objectives and the comparison of trials by their metrics (weighted or Pareto).

Layer 1. A metric value that is NaN, infinite or missing makes the whole metric vector
*invalid*: an invalid vector loses to every valid one and ties with other invalid ones. That
is the only safe reading of a diverged run's "inf accuracy" or "NaN loss".

Smoothing (``Objective(..., smoothing=k)``): a single evaluation at a trial's end is noisy
(a small validation batch, a lucky minibatch), and a binary tournament between two noisy
numbers is close to a coin toss. With ``k > 1`` the policies compare the *fitness*: the mean
of the last ``k`` reports of the lineage (the trial's final metrics and the measurements
before them, then its ancestors'), see ``Objective.smooth``. Stored metrics, "best trial"
and summaries stay the raw values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.fields import is_int, is_number

Goal = Literal["max", "min"]
Comparison = Literal["weighted", "pareto"]
Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Metric:
    """One objective metric; ``weight`` only matters for ``weighted`` comparison."""

    name: str
    goal: Goal = "max"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"metric name must be a non-empty string, got {self.name!r}")
        if self.goal not in ("max", "min"):
            raise ConfigError(f"metric {self.name!r}: goal must be 'max' or 'min', got {self.goal!r}")
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"metric {self.name!r}: weight must be a positive finite number")


@dataclass(frozen=True)
class Objective:
    """What "better" means: one or more metrics, compared by weighted sum or by dominance."""

    metrics: tuple[Metric, ...]
    comparison: Comparison = "weighted"
    smoothing: int = 1

    def __init__(self, metrics: Sequence[Metric] | Metric, comparison: Comparison = "weighted",
                 smoothing: int = 1) -> None:
        items = (metrics,) if isinstance(metrics, Metric) else tuple(metrics)
        if not items:
            raise ConfigError("an objective needs at least one metric")
        if len({m.name for m in items}) != len(items):
            raise ConfigError("objective metric names must be unique")
        if comparison not in ("weighted", "pareto"):
            raise ConfigError(f"comparison must be 'weighted' or 'pareto', got {comparison!r}")
        if not is_int(smoothing) or smoothing < 1:
            raise ConfigError(f"smoothing must be an int >= 1 (reports averaged), got {smoothing!r}")
        object.__setattr__(self, "metrics", items)
        object.__setattr__(self, "comparison", comparison)
        object.__setattr__(self, "smoothing", smoothing)

    @classmethod
    def maximize(cls, name: str, smoothing: int = 1) -> Objective:
        return cls(Metric(name, "max"), smoothing=smoothing)

    @classmethod
    def minimize(cls, name: str, smoothing: int = 1) -> Objective:
        return cls(Metric(name, "min"), smoothing=smoothing)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    # -- smoothing ------------------------------------------------------------------------
    def smooth(self, reports: Sequence[Metrics | None]) -> dict[str, float] | None:
        """The fitness of a lineage from its reports, oldest first (the newest is the trial's
        final metrics): per objective metric, the mean over the last ``smoothing`` reports.

        The newest report decides validity: if it is invalid (diverged now) so is the fitness,
        whatever came before. Older invalid reports are left out of the mean rather than
        poisoning it. ``None`` when there is no report at all.
        """
        if not reports or not self.is_valid(reports[-1]):
            return None if not reports or reports[-1] is None else dict(reports[-1])
        window = [r for r in reports[-self.smoothing:] if self.is_valid(r)]
        return {name: sum(float(r[name]) for r in window if r is not None) / len(window) for name in self.names}

    # -- the primitives -------------------------------------------------------------------
    def oriented(self, values: Metrics | None) -> tuple[float, ...] | None:
        """Metric values turned so that bigger is better, or None if any is non-finite/missing."""
        if values is None:
            return None
        out = []
        for metric in self.metrics:
            raw = values.get(metric.name)
            if not is_number(raw) or not math.isfinite(raw):
                return None
            out.append(float(raw) if metric.goal == "max" else -float(raw))
        return tuple(out)

    def is_valid(self, values: Metrics | None) -> bool:
        return self.oriented(values) is not None

    def scalar(self, values: Metrics | None) -> float:
        """Weighted sum of oriented metrics; ``-inf`` for an invalid vector."""
        oriented = self.oriented(values)
        if oriented is None:
            return -math.inf
        return sum(m.weight * v for m, v in zip(self.metrics, oriented, strict=True))

    def compare(self, a: Metrics | None, b: Metrics | None) -> int:
        """``1`` if ``a`` is better, ``-1`` if ``b`` is better, ``0`` for a tie/incomparable."""
        oa, ob = self.oriented(a), self.oriented(b)
        if oa is None or ob is None:
            return (oa is not None) - (ob is not None)
        if self.comparison == "pareto":
            return _dominance(oa, ob)
        sa, sb = self.scalar(a), self.scalar(b)
        return (sa > sb) - (sa < sb)

    def rank_keys(self, population: Sequence[Metrics | None]) -> list[tuple[float, float]]:
        """A total-order key per member (bigger is better), for truncation, quantiles and "best".

        Weighted: ``(valid, scalar)``. Pareto: ``(valid, -number of members that dominate it,
        then the weighted scalar)`` so the non-dominated front sorts first and ties inside a front
        are broken by the weights. O(n²) in the population, which is small by construction.
        """
        oriented = [self.oriented(v) for v in population]
        keys: list[tuple[float, float]] = []
        for i, oi in enumerate(oriented):
            if oi is None:
                keys.append((-math.inf, -math.inf))
                continue
            if self.comparison == "pareto":
                dominated_by = sum(
                    1 for j, oj in enumerate(oriented) if j != i and oj is not None and _dominance(oj, oi) > 0
                )
                keys.append((-float(dominated_by), self.scalar(population[i])))
            else:
                keys.append((0.0, self.scalar(population[i])))
        return keys

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``smoothing`` only when it is on, so stores written before it
        existed read back equal."""
        out: dict[str, Any] = {
            "comparison": self.comparison,
            "metrics": [{"name": m.name, "goal": m.goal, "weight": m.weight} for m in self.metrics],
        }
        if self.smoothing != 1:
            out["smoothing"] = self.smoothing
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Objective:
        return cls([Metric(m["name"], m["goal"], m["weight"]) for m in data["metrics"]], data["comparison"],
                   smoothing=data.get("smoothing", 1))


def _dominance(a: tuple[float, ...], b: tuple[float, ...]) -> int:
    """Pareto dominance of oriented vectors: 1 if a dominates b, -1 if b dominates a, else 0."""
    a_better = any(x > y for x, y in zip(a, b, strict=True))
    b_better = any(y > x for x, y in zip(a, b, strict=True))
    if a_better and not b_better:
        return 1
    if b_better and not a_better:
        return -1
    return 0
