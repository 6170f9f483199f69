"""Objective comparison: weighted and Pareto, with NaN/inf always losing."""

from __future__ import annotations

import math

import pytest

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.fitness import Metric, Objective

pytestmark = pytest.mark.timeout(30)

PARETO = Objective([Metric("acc", "max"), Metric("latency", "min")], "pareto")
WEIGHTED = Objective([Metric("acc", "max", 1.0), Metric("latency", "min", 0.5)], "weighted")


def test_pareto_dominance_in_both_directions() -> None:
    a = {"acc": 0.9, "latency": 10.0}
    b = {"acc": 0.8, "latency": 12.0}
    assert PARETO.compare(a, b) == 1
    assert PARETO.compare(b, a) == -1


def test_pareto_weakly_better_in_one_metric_still_dominates() -> None:
    assert PARETO.compare({"acc": 0.9, "latency": 10.0}, {"acc": 0.9, "latency": 11.0}) == 1


def test_pareto_incomparable_and_equal_pairs_are_ties() -> None:
    assert PARETO.compare({"acc": 0.9, "latency": 20.0}, {"acc": 0.8, "latency": 10.0}) == 0
    assert PARETO.compare({"acc": 0.9, "latency": 20.0}, {"acc": 0.9, "latency": 20.0}) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("objective", [PARETO, WEIGHTED])
def test_non_finite_metrics_always_lose(objective: Objective, bad: float) -> None:
    good = {"acc": 0.0, "latency": 1e9}
    broken = {"acc": bad, "latency": 1.0}
    assert objective.compare(broken, good) == -1
    assert objective.compare(good, broken) == 1
    assert objective.compare(broken, {"acc": 0.5, "latency": bad}) == 0
    assert objective.compare(broken, None) == 0


def test_missing_metric_counts_as_invalid() -> None:
    assert WEIGHTED.compare({"acc": 0.1}, {"acc": 0.0, "latency": 5.0}) == -1


def test_weighted_scalar_orients_min_metrics() -> None:
    assert WEIGHTED.scalar({"acc": 1.0, "latency": 2.0}) == pytest.approx(1.0 - 0.5 * 2.0)
    assert WEIGHTED.compare({"acc": 0.9, "latency": 1.0}, {"acc": 0.95, "latency": 2.0}) == 1


def test_pareto_rank_keys_put_the_front_first_and_invalid_last() -> None:
    members = [
        {"acc": 0.9, "latency": 10.0},  # front
        {"acc": 0.8, "latency": 5.0},  # front
        {"acc": 0.7, "latency": 11.0},  # dominated by both
        {"acc": math.nan, "latency": 1.0},  # invalid
    ]
    keys = PARETO.rank_keys(members)
    order = sorted(range(4), key=lambda i: keys[i], reverse=True)
    assert set(order[:2]) == {0, 1}
    assert order[2:] == [2, 3]


def test_objective_validation() -> None:
    with pytest.raises(ConfigError):
        Objective([])
    with pytest.raises(ConfigError):
        Objective([Metric("a"), Metric("a")])
    with pytest.raises(ConfigError):
        Metric("a", "up")  # type: ignore[arg-type]
    assert Objective.from_dict(PARETO.to_dict()) == PARETO
