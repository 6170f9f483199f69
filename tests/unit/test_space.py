"""Search space: validation names the parameter; mutation rules per type; bounds always hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_actors.model.errors import SpaceError
from pbt_actors.model.space import Categorical, Discrete, Fixed, Float, Int, SearchSpace

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"lr": Float(0.5, 0.1)}, "low (0.5) must be < high (0.1)"),
        ({"lr": Float(0.1, 0.1)}, "must be < high"),
        ({"lr": Float(0.0, 1.0, log=True)}, "log scale needs low > 0"),
        ({"layers": Int(3, 1)}, "must be < high"),
        ({"layers": Int(0, 4, log=True)}, "log scale needs low > 0"),
        ({"layers": Int(1.5, 4)}, "must be integers"),  # type: ignore[arg-type]
        ({"batch": Discrete([])}, "at least one value"),
        ({"batch": Discrete([32, 16, 64])}, "sorted ascending"),
        ({"batch": Discrete([16, 16, 32])}, "duplicates"),
        ({"opt": Categorical([])}, "at least one choice"),
        ({"opt": Categorical(["sgd", "sgd"])}, "duplicates"),
    ],
)
def test_invalid_spaces_raise_errors_that_name_the_parameter(params, needle) -> None:
    with pytest.raises(SpaceError) as info:
        SearchSpace(params)
    name = next(iter(params))
    assert info.value.name == name
    assert repr(name) in str(info.value)
    assert needle in str(info.value)


def test_empty_space_is_refused() -> None:
    with pytest.raises(SpaceError):
        SearchSpace({})


def test_complete_fills_missing_names_and_rejects_out_of_domain_values() -> None:
    space = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "opt": Categorical(["sgd", "adam"])})
    rng = np.random.default_rng(0)
    full = space.complete({"lr": 0.01}, rng)
    assert full["lr"] == 0.01 and full["opt"] in ("sgd", "adam")
    with pytest.raises(SpaceError, match="'lr'"):
        space.complete({"lr": 5.0}, rng)
    with pytest.raises(SpaceError, match="'momentum'"):
        space.complete({"momentum": 0.9}, rng)


def test_linear_float_perturbs_by_exactly_point_eight_or_one_point_two() -> None:
    param = Float(0.0, 100.0)
    rng = np.random.default_rng(1)
    ratios = {round(param.perturb(10.0, rng) / 10.0, 9) for _ in range(200)}
    assert ratios == {0.8, 1.2}


def test_log_float_perturbs_symmetrically_in_log_space() -> None:
    param = Float(1e-6, 1.0, log=True)
    rng = np.random.default_rng(2)
    steps = {round(math.log(param.perturb(1e-3, rng) / 1e-3), 9) for _ in range(200)}
    assert steps == {round(math.log(1.2), 9), round(-math.log(1.2), 9)}


def test_int_always_moves_and_log_int_steps_by_a_factor() -> None:
    rng = np.random.default_rng(3)
    small = Int(0, 10)
    assert all(small.perturb(2, rng) in (1, 3) for _ in range(100))  # 2·1.2 rounds back to 2
    log_int = Int(1, 10_000, log=True)
    values = {log_int.perturb(1000, rng) for _ in range(100)}
    assert values == {1200, 833}


def test_discrete_steps_to_a_neighbour_and_turns_at_the_edges() -> None:
    param = Discrete([16, 32, 64, 128])
    rng = np.random.default_rng(4)
    assert {param.perturb(32, rng) for _ in range(100)} == {16, 64}
    assert {param.perturb(16, rng) for _ in range(50)} == {32}
    assert {param.perturb(128, rng) for _ in range(50)} == {64}


def test_categorical_resamples_from_the_prior_and_fixed_never_changes() -> None:
    rng = np.random.default_rng(5)
    cat = Categorical(["a", "b", "c"])
    assert {cat.perturb("a", rng) for _ in range(200)} == {"a", "b", "c"}
    space = SearchSpace({"f": Fixed(7), "x": Float(0.0, 1.0)})
    for _ in range(50):
        assert space.mutate({"f": 7, "x": 0.5}, rng, resample_prob=1.0)["f"] == 7


def test_resample_prob_one_draws_from_the_prior() -> None:
    space = SearchSpace({"x": Float(0.0, 1.0)})
    rng = np.random.default_rng(6)
    values = [space.mutate({"x": 0.5}, rng, resample_prob=1.0)["x"] for _ in range(200)]
    assert any(v not in (0.4, 0.6) for v in values)
    assert min(values) < 0.2 and max(values) > 0.8


@st.composite
def spaces_and_values(draw):
    low = draw(st.floats(1e-6, 10.0))
    high = low + draw(st.floats(1e-3, 100.0))
    ilow = draw(st.integers(1, 50))
    ihigh = ilow + draw(st.integers(1, 50))
    space = SearchSpace({
        "f": Float(low, high), "fl": Float(low, high, log=True),
        "i": Int(ilow, ihigh), "il": Int(ilow, ihigh, log=True),
        "d": Discrete(sorted(set(draw(st.lists(st.integers(-5, 50), min_size=1, max_size=6))))),
        "c": Categorical(["x", "y"]),
    })
    return space, draw(st.integers(0, 2**32 - 1)), draw(st.floats(0, 1))


@given(spaces_and_values())
@settings(max_examples=150, deadline=None)
def test_sampling_and_any_chain_of_mutations_stay_inside_the_bounds(case) -> None:
    space, seed, resample_prob = case
    rng = np.random.default_rng(seed)
    hparams = space.sample(rng)
    for _ in range(30):
        hparams = space.mutate(hparams, rng, resample_prob)
        for name, value in hparams.items():
            assert space[name].contains(value), (name, value, space[name])


def test_space_round_trips_through_its_stored_form() -> None:
    space = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "n": Int(1, 9), "b": Discrete([8, 16]),
                         "o": Categorical(["sgd", "adam"]), "k": Fixed("x")})
    assert SearchSpace.from_dict(space.to_dict()) == space
