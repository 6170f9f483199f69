"""Scripted simulations: the real ``ControllerCore`` and policies with virtual workers in
virtual time (layer 5). See ``engine`` for the event model (``cluster_model`` for its
settings, ``sim_result`` for what a run reached), ``objectives`` for the synthetic problems
and ``sweep`` for sweeps over settings and seeds, which ``pbt-actors sim``
(``pbt_actors.cli.sim``) runs and tabulates. That command imports this package only when it
runs, so registering it stays light.
"""

from __future__ import annotations

from pbt_actors.tools.sim.cluster_model import SimConfig
from pbt_actors.tools.sim.engine import Simulation, fake_checkpoint, simulate
from pbt_actors.tools.sim.objectives import (
    OBJECTIVES,
    LearningCurve,
    ParetoCurve,
    SimObjective,
    ToyQuadratic,
    make_objective,
)
from pbt_actors.tools.sim.sim_result import SimResult

__all__ = [
    "OBJECTIVES", "LearningCurve", "ParetoCurve", "SimConfig", "SimObjective", "SimResult", "Simulation",
    "ToyQuadratic", "fake_checkpoint", "make_objective", "simulate",
]
