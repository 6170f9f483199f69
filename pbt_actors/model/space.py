"""Search space: parameter types, validation, prior sampling and the mutation rules.

Layer 1 (data model): imports nothing of ours but the error types. Every function here is
pure; randomness comes from an injected ``numpy.random.Generator`` so that the controller's
decisions can be replayed from ``(seed, trial id, decision kind)``.

Mutation rules (docs/design.md §7.3, with one deliberate refinement, see ``Float.perturb``):

* ``Float``/``Int`` linear: multiply by 0.8 or 1.2, clip to bounds.
* ``Float``/``Int`` log scale: multiply or divide by 1.2, i.e. a symmetric step of
  ``±log(1.2)`` *in log space*. The paper's ×0.8/×1.2 pair drifts downward in log space
  (0.8 · 1.2 = 0.96), which slowly biases a learning rate towards zero; on a log axis the
  symmetric step is the unbiased one.
* ``Int`` always moves by at least one unit when the multiplication rounds back to itself.
* ``Discrete`` steps to the next lower or higher value (the other way at an edge).
* ``Categorical`` resamples from its prior.
* ``Fixed`` never changes.
* Any non-fixed parameter is resampled from its prior with probability ``resample_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from pbt_actors.model.errors import SpaceError
from pbt_actors.model.fields import is_int, is_number

Scalar: TypeAlias = bool | int | float | str
Hyperparams: TypeAlias = dict[str, Any]

PERTURB_FACTORS = (0.8, 1.2)
LOG_PERTURB_FACTOR = 1.2


@dataclass(frozen=True)
class Float:
    """A real-valued parameter in ``[low, high]``; ``log=True`` samples and steps in log space."""

    low: float
    high: float
    log: bool = False

    def validate(self, name: str) -> None:
        if not (is_number(self.low) and is_number(self.high)):
            raise SpaceError(name, f"bounds must be numbers, got low={self.low!r} high={self.high!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SpaceError(name, "bounds must be finite")
        if self.low >= self.high:
            raise SpaceError(name, f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise SpaceError(name, f"log scale needs low > 0, got low={self.low}")

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def perturb(self, value: Any, rng: np.random.Generator) -> float:
        up = bool(rng.integers(2))
        if self.log:
            step = math.log(LOG_PERTURB_FACTOR) * (1 if up else -1)
            new = math.exp(math.log(max(float(value), self.low)) + step)
        else:
            new = float(value) * PERTURB_FACTORS[1 if up else 0]
        return self.clip(new)

    def clip(self, value: float) -> float:
        return float(min(self.high, max(self.low, value)))

    def contains(self, value: Any) -> bool:
        return is_number(value) and self.low <= float(value) <= self.high


@dataclass(frozen=True)
class Int:
    """An integer parameter in ``[low, high]`` (both inclusive)."""

    low: int
    high: int
    log: bool = False

    def validate(self, name: str) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int)) or isinstance(
            self.low, bool
        ):
            raise SpaceError(name, f"bounds must be integers, got low={self.low!r} high={self.high!r}")
        if self.low >= self.high:
            raise SpaceError(name, f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise SpaceError(name, f"log scale needs low > 0, got low={self.low}")

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            lo, hi = math.log(self.low - 0.5 if self.low > 0.5 else self.low), math.log(self.high + 0.5)
            return self.clip(round(math.exp(rng.uniform(lo, hi))))
        return int(rng.integers(self.low, self.high + 1))

    def perturb(self, value: Any, rng: np.random.Generator) -> int:
        up = bool(rng.integers(2))
        current = int(value)
        if self.log:
            factor = LOG_PERTURB_FACTOR if up else 1 / LOG_PERTURB_FACTOR
            raw = max(current, self.low) * factor
        else:
            raw = current * PERTURB_FACTORS[1 if up else 0]
        new = round(raw)
        if new == current:  # a small integer would never move under ×1.2 rounding
            new = current + (1 if up else -1)
        return self.clip(new)

    def clip(self, value: float) -> int:
        return int(min(self.high, max(self.low, round(value))))

    def contains(self, value: Any) -> bool:
        return is_int(value) and self.low <= value <= self.high


@dataclass(frozen=True)
class Discrete:
    """An ordered set of numbers (e.g. batch sizes); mutation steps to a neighbour."""

    values: tuple[float | int, ...]

    def __init__(self, values: Sequence[float | int]) -> None:
        object.__setattr__(self, "values", tuple(values))

    def validate(self, name: str) -> None:
        if not self.values:
            raise SpaceError(name, "Discrete needs at least one value")
        if not all(is_number(v) for v in self.values):
            raise SpaceError(name, f"Discrete values must be numbers, got {list(self.values)!r}")
        if len(set(self.values)) != len(self.values):
            raise SpaceError(name, f"Discrete values contain duplicates: {list(self.values)!r}")
        if list(self.values) != sorted(self.values):
            raise SpaceError(name, f"Discrete values must be sorted ascending: {list(self.values)!r}")

    def sample(self, rng: np.random.Generator) -> float | int:
        return self.values[int(rng.integers(len(self.values)))]

    def perturb(self, value: Any, rng: np.random.Generator) -> float | int:
        if len(self.values) == 1:
            return self.values[0]
        index = self._nearest_index(value)
        step = 1 if rng.integers(2) else -1
        if not 0 <= index + step < len(self.values):
            step = -step
        return self.values[index + step]

    def _nearest_index(self, value: Any) -> int:
        return min(range(len(self.values)), key=lambda i: abs(float(self.values[i]) - float(value)))

    def contains(self, value: Any) -> bool:
        return is_number(value) and value in self.values


@dataclass(frozen=True)
class Categorical:
    """Unordered choices; mutation resamples from the prior (there is no neighbour)."""

    choices: tuple[Scalar, ...]

    def __init__(self, choices: Sequence[Scalar]) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def validate(self, name: str) -> None:
        if not self.choices:
            raise SpaceError(name, "Categorical needs at least one choice")
        if len(set(self.choices)) != len(self.choices):
            raise SpaceError(name, f"Categorical choices contain duplicates: {list(self.choices)!r}")
        for choice in self.choices:
            if not isinstance(choice, bool | int | float | str):
                raise SpaceError(name, f"choice {choice!r} is not a bool, number or string")

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.choices[int(rng.integers(len(self.choices)))]

    def perturb(self, value: Any, rng: np.random.Generator) -> Scalar:
        return self.sample(rng)

    def contains(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Fixed:
    """A constant, recorded with every trial so that a schedule is self-describing."""

    value: Scalar

    def validate(self, name: str) -> None:
        if not isinstance(self.value, bool | int | float | str):
            raise SpaceError(name, f"Fixed value {self.value!r} is not a bool, number or string")

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.value

    def perturb(self, value: Any, rng: np.random.Generator) -> Scalar:
        return self.value

    def contains(self, value: Any) -> bool:
        return bool(value == self.value)


Param: TypeAlias = Float | Int | Discrete | Categorical | Fixed


class SearchSpace(Mapping[str, Param]):
    """An ordered, validated mapping ``name -> Param``.

    The order is the user's declaration order; it fixes the order in which random numbers are
    drawn, which is what makes sampling and mutation reproducible.
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        if not params:
            raise SpaceError("<space>", "the search space is empty")
        for name, param in params.items():
            if not isinstance(name, str) or not name:
                raise SpaceError(repr(name), "parameter names must be non-empty strings")
            if not isinstance(param, Float | Int | Discrete | Categorical | Fixed):
                raise SpaceError(name, f"{param!r} is not a Float, Int, Discrete, Categorical or Fixed")
            param.validate(name)
        self._params = dict(params)

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"SearchSpace({self._params!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self._params == other._params

    __hash__ = None  # type: ignore[assignment]  # mutable-looking mapping: not hashable

    def sample(self, rng: np.random.Generator) -> Hyperparams:
        """Draw every parameter from its prior, in declaration order."""
        return {name: param.sample(rng) for name, param in self._params.items()}

    def complete(self, partial: Mapping[str, Any], rng: np.random.Generator) -> Hyperparams:
        """Validate user-given values and sample the parameters they leave out.

        Raises:
            SpaceError: an unknown name or a value outside its parameter's domain.
        """
        for name in partial:
            if name not in self._params:
                raise SpaceError(name, "is not a parameter of the search space")
        result: Hyperparams = {}
        for name, param in self._params.items():
            drawn = param.sample(rng)  # always draw, so the stream does not depend on `partial`
            if name in partial:
                value = partial[name]
                if isinstance(param, Float) and is_int(value):
                    value = float(value)
                if not param.contains(value):
                    raise SpaceError(name, f"value {value!r} is outside {param!r}")
                result[name] = value
            else:
                result[name] = drawn
        return result

    def mutate(
        self, hparams: Mapping[str, Any], rng: np.random.Generator, resample_prob: float
    ) -> Hyperparams:
        """Explore around ``hparams``: resample with ``resample_prob``, else perturb."""
        child: Hyperparams = {}
        for name, param in self._params.items():
            if isinstance(param, Fixed):
                child[name] = param.value
                continue
            resample = rng.random() < resample_prob
            if resample or name not in hparams:
                child[name] = param.sample(rng)
            else:
                child[name] = param.perturb(hparams[name], rng)
        return child

    def crossover(
        self, base: Mapping[str, Any], other: Mapping[str, Any], rng: np.random.Generator
    ) -> Hyperparams:
        """Uniform crossover: each parameter comes from ``other`` with probability 0.5."""
        return {
            name: (other[name] if name in other and rng.random() < 0.5 else base.get(name))
            for name in self._params
        }

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly description, stored in the experiment's ``meta``."""
        out: dict[str, Any] = {}
        for name, param in self._params.items():
            if isinstance(param, Float | Int):
                out[name] = {"type": type(param).__name__.lower(), "low": param.low,
                             "high": param.high, "log": param.log}
            elif isinstance(param, Discrete):
                out[name] = {"type": "discrete", "values": list(param.values)}
            elif isinstance(param, Categorical):
                out[name] = {"type": "categorical", "choices": list(param.choices)}
            else:
                out[name] = {"type": "fixed", "value": param.value}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        params: dict[str, Param] = {}
        for name, spec in data.items():
            kind = spec.get("type") if isinstance(spec, Mapping) else None
            if kind in ("float", "int"):
                ptype = Float if kind == "float" else Int
                params[name] = ptype(spec["low"], spec["high"], bool(spec.get("log", False)))
            elif kind == "discrete":
                params[name] = Discrete(spec["values"])
            elif kind == "categorical":
                params[name] = Categorical(spec["choices"])
            elif kind == "fixed":
                params[name] = Fixed(spec["value"])
            else:
                raise SpaceError(str(name), f"unknown parameter description {spec!r}")
        return cls(params)
