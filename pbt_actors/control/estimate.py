"""How many trials a run will complete: an estimate, re-made from what the store shows.

Layer 3, pure (records in, a number out). Before the run, each of the ``population`` slots
needs ``ceil(max_steps / steps_per_trial)`` trials. That is only a guess: when a slot exploits a
member that is behind it, its child starts at the member's (earlier) step and the slot needs
more trials; copying a member ahead of it saves some; a step budget or ``max_trials`` ends the
search early. A user saw ``~160`` and runs that made 177-213 trials. So the progress line
re-estimates from the slots' frontiers: completed trials so far, plus for each slot its trial
in flight (or its latest completed trial) and the trials from that trial's end to ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore

if TYPE_CHECKING:
    from pbt_actors.model.experiment import Experiment


def _trials_to_end(from_step: int, experiment: Experiment) -> int:
    left = max(0, experiment.max_steps - from_step)
    return -(-left // experiment.steps_per_trial)


def initial_estimate(experiment: Experiment) -> int:
    """Trials to complete before anything ran: every slot from step 0 to ``max_steps``, at most
    ``max_trials``."""
    expected = experiment.population * _trials_to_end(0, experiment)
    return min(expected, experiment.max_trials) if experiment.max_trials else expected


def estimate_completed(completed: int, active: Iterable[Trial], waiting: Iterable[Trial], lost: int,
                       experiment: Experiment) -> int:
    """Completed trials the run will end with, judged from its frontier.

    ``completed`` trials so far, plus: each ``active`` trial (PENDING/RUNNING) itself and the
    trials from its end to ``max_steps``; each ``waiting`` trial (COMPLETED, not reproduced yet:
    its child starts about where it ended) the trials from its end. A completed trial that has
    reproduced is followed by an active or completed trial of its slot, or its slot is over.
    ``lost`` (FAILED + STOPPED) trials count nothing (their stand-ins are active) but use up
    ``max_trials``, which caps all trials created.
    """
    estimate = completed + sum(1 + _trials_to_end(t.end_step, experiment) for t in active)
    estimate += sum(_trials_to_end(t.end_step, experiment) for t in waiting)
    if experiment.max_trials:
        estimate = min(estimate, max(completed, experiment.max_trials - lost))
    return estimate


def read_estimate(store: TrialStore, experiment: Experiment) -> int:
    """``estimate_completed`` from the store's indexes: O(active + waiting) records, O(1) counts,
    so the controller can answer it with every status request."""
    active = store.trials([*store.ids_with_status(TrialStatus.PENDING), *store.ids_with_status(TrialStatus.RUNNING)])
    lost = store.count(TrialStatus.FAILED) + store.count(TrialStatus.STOPPED)
    return estimate_completed(store.count(TrialStatus.COMPLETED), active, store.trials(store.uninitiated()), lost,
                              experiment)
