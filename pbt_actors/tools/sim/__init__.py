"""Scripted simulations: the real ``ControllerCore`` and policies with virtual workers in
virtual time (layer 5). See ``engine`` for the event model and ``objectives`` for the
synthetic problems; ``pbt-actors sim`` (``cli``) runs sweeps and prints summary tables.

Names are imported lazily, so that registering the ``sim`` subcommand (``cli``) does not
load the controller and numpy for every ``pbt-actors`` invocation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbt_actors.tools.sim.engine import SimConfig, SimResult, Simulation, fake_checkpoint, simulate
    from pbt_actors.tools.sim.objectives import (
        OBJECTIVES,
        LearningCurve,
        ParetoCurve,
        SimObjective,
        ToyQuadratic,
        make_objective,
    )

_EXPORTS: dict[str, str] = {
    "SimConfig": "pbt_actors.tools.sim.engine",
    "SimResult": "pbt_actors.tools.sim.engine",
    "Simulation": "pbt_actors.tools.sim.engine",
    "fake_checkpoint": "pbt_actors.tools.sim.engine",
    "simulate": "pbt_actors.tools.sim.engine",
    "OBJECTIVES": "pbt_actors.tools.sim.objectives",
    "LearningCurve": "pbt_actors.tools.sim.objectives",
    "ParetoCurve": "pbt_actors.tools.sim.objectives",
    "SimObjective": "pbt_actors.tools.sim.objectives",
    "ToyQuadratic": "pbt_actors.tools.sim.objectives",
    "make_objective": "pbt_actors.tools.sim.objectives",
}

__all__ = [
    "OBJECTIVES", "LearningCurve", "ParetoCurve", "SimConfig", "SimObjective", "SimResult", "Simulation",
    "ToyQuadratic", "fake_checkpoint", "make_objective", "simulate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pbt_actors.tools.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
