"""pbt_actors: Population Based Training as short asynchronous trials (Li et al., KDD 2019).

The public API is ``__all__``. Names are imported lazily so that ``storage`` and ``transport``
(which import ``pbt_actors.model.records``) never drag the actor shell, torch or ZeroMQ in.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS: dict[str, str] = {
    # layer 1: data model
    "Float": "pbt_actors.model.space",
    "Int": "pbt_actors.model.space",
    "Discrete": "pbt_actors.model.space",
    "Categorical": "pbt_actors.model.space",
    "Fixed": "pbt_actors.model.space",
    "SearchSpace": "pbt_actors.model.space",
    "Metric": "pbt_actors.model.fitness",
    "Objective": "pbt_actors.model.fitness",
    "Experiment": "pbt_actors.model.experiment",
    "EarlyStop": "pbt_actors.model.experiment",
    "Retention": "pbt_actors.model.experiment",
    "Trial": "pbt_actors.model.records",
    "TrialStatus": "pbt_actors.model.records",
    "CheckpointRef": "pbt_actors.model.records",
    "Measurement": "pbt_actors.model.records",
    # layer 3: the pure controller
    "ControllerCore": "pbt_actors.control.core",
    # layer 4 and 5: the embedding API
    "Controller": "pbt_actors.runtime.controller.controller_actor",
    "ControllerHandle": "pbt_actors.runtime.controller.controller_actor",
    "WorkerClient": "pbt_actors.runtime.worker.worker_client",
    "TrialContext": "pbt_actors.runtime.worker.trial_context",
    "run_inprocess": "pbt_actors.tools.inprocess",
}

__all__ = [
    "Categorical", "CheckpointRef", "Controller", "ControllerCore", "ControllerHandle", "Discrete", "EarlyStop",
    "Experiment", "Fixed", "Float", "Int", "Measurement", "Metric", "Objective", "Retention", "SearchSpace", "Trial",
    "TrialContext", "TrialStatus", "WorkerClient", "run_inprocess",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pbt_actors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
