"""Policies: pure functions of a read-only population view (layer 3).

``make_policy`` is the explicit name → class map (no registration by import side effects).
"""

from __future__ import annotations

from pbt_actors.control.policies.early_stop import early_stop_decision
from pbt_actors.control.policies.initiator import InitiatorPolicy
from pbt_actors.control.policies.policy import (
    Decision,
    Event,
    Idle,
    Policy,
    PopulationView,
    Retire,
    RngFactory,
    Spawn,
    StopTrial,
    TrialCompleted,
    TrialEnded,
)
from pbt_actors.control.policies.random_search import RandomPolicy
from pbt_actors.control.policies.truncation import TruncationPolicy
from pbt_actors.model.experiment import Experiment

POLICIES: dict[str, type[Policy]] = {
    "initiator": InitiatorPolicy,
    "truncation": TruncationPolicy,
    "random": RandomPolicy,
}


def make_policy(experiment: Experiment) -> Policy:
    return POLICIES[experiment.policy](experiment)


__all__ = [
    "POLICIES", "Decision", "Event", "Idle", "InitiatorPolicy", "Policy", "PopulationView",
    "RandomPolicy", "Retire", "RngFactory", "Spawn", "StopTrial", "TrialCompleted", "TrialEnded",
    "TruncationPolicy", "early_stop_decision", "make_policy",
]
