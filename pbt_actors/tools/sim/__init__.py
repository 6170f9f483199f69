"""Scripted simulations: the real ``ControllerCore`` and policies with virtual workers in
virtual time (layer 5). See ``engine`` for the event model and ``objectives`` for the
synthetic problems; ``pbt-actors sim`` (``pbt_actors.cli.sim``) runs sweeps and prints summary
tables. That command imports this package only when it runs, so registering it stays light.
"""

from __future__ import annotations

from pbt_actors.tools.sim.engine import SimConfig, SimResult, Simulation, fake_checkpoint, simulate
from pbt_actors.tools.sim.objectives import (
    OBJECTIVES,
    LearningCurve,
    ParetoCurve,
    SimObjective,
    ToyQuadratic,
    make_objective,
)

__all__ = [
    "OBJECTIVES", "LearningCurve", "ParetoCurve", "SimConfig", "SimObjective", "SimResult", "Simulation",
    "ToyQuadratic", "fake_checkpoint", "make_objective", "simulate",
]
