"""pbt_actors: Population Based Training as short asynchronous trials (Li et al., KDD 2019).

The public API is ``__all__``. Names are imported lazily so that ``storage`` and ``transport``
(which import ``pbt_actors.model``) never drag the actor shell, torch or ZeroMQ in.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS: dict[str, str] = {
    # layer 1: data model
    "Float": "pbt_actors.space",
    "Int": "pbt_actors.space",
    "Discrete": "pbt_actors.space",
    "Categorical": "pbt_actors.space",
    "Fixed": "pbt_actors.space",
    "SearchSpace": "pbt_actors.space",
    "Metric": "pbt_actors.fitness",
    "Objective": "pbt_actors.fitness",
    "Experiment": "pbt_actors.experiment",
    "EarlyStop": "pbt_actors.experiment",
    "Trial": "pbt_actors.model",
    "TrialStatus": "pbt_actors.model",
    "CheckpointRef": "pbt_actors.model",
    "Measurement": "pbt_actors.model",
    # layer 3: the pure controller
    "ControllerCore": "pbt_actors.core",
}

__all__ = [
    "Categorical", "CheckpointRef", "ControllerCore", "Discrete", "EarlyStop", "Experiment", "Fixed",
    "Float", "Int", "Measurement", "Metric", "Objective", "SearchSpace", "Trial", "TrialStatus",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pbt_actors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
