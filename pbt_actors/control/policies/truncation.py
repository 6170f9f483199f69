"""Truncation selection (Jaderberg et al. 2017), asynchronous, over the trial graph.

When a trial completes it is ranked among the *current population*: itself plus the completed
trials that the pending and running trials continue from (one latest state per live lineage,
``PopulationView.frontier``). Ranking against a window of generations instead compares a
member with the population's past, or with nobody once lineages drift apart in generation
(fast and slow workers), and exploitation then silently stops. If it is in the bottom
``truncation_quantile``, its lineage *exploits*: the child warm-starts from a uniformly drawn
member of the top quantile and *explores* by mutating that member's hyperparameters.
Otherwise the lineage simply continues with unchanged hyperparameters.
"""

from __future__ import annotations

import math

from pbt_actors.control.policies.policy import Decision, Policy, PopulationView, Retire, RngFactory, Spawn
from pbt_actors.model.records import Origin, OriginKind, Trial, TrialStatus


class TruncationPolicy(Policy):
    """Bottom quantile copies a random top-quantile member, then explores."""

    def on_completed(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        return [self.step(view, trial, rngs)]

    def ranked(self, view: PopulationView, trial: Trial) -> list[Trial]:
        """The current population including ``trial``, best first (ties: older id first)."""
        members = [t for t in view.frontier() if t.id != trial.id]
        if trial.status is TrialStatus.COMPLETED:
            members.append(trial)
        keys = self.objective.rank_keys([self.fitness(view, t) for t in members])
        order = sorted(range(len(members)), key=lambda i: (keys[i], -members[i].id), reverse=True)
        return [members[i] for i in order]

    def step(self, view: PopulationView, trial: Trial, rngs: RngFactory,
             exclude_parent: int | None = None, replaces: int | None = None) -> Decision:
        rng = self.reproduction_rng(rngs, trial, replaces)
        ranked = [t for t in self.ranked(view, trial) if t.id != exclude_parent]
        cut = math.ceil(self.experiment.truncation_quantile * len(ranked)) if len(ranked) >= 2 else 0
        top, bottom = ranked[:cut], ranked[len(ranked) - cut:] if cut else []
        in_bottom = any(t.id == trial.id for t in bottom) and not any(t.id == trial.id for t in top)
        if in_bottom or trial.id == exclude_parent:
            if not top:
                return Retire(trial.id, "no member to copy from")
            source = top[int(rng.integers(len(top)))]
            hparams = (self.explore_hparams(view, source.hparams, trial.generation, rng)
                       if self.explores(view, source) else dict(source.hparams))
            kind = OriginKind.REPLACEMENT if replaces is not None else OriginKind.TRUNCATION
            origin = Origin(kind, initiator=trial.id, winner=source.id, replaces=replaces)
            parent = source
        else:
            kind = OriginKind.REPLACEMENT if replaces is not None else OriginKind.CONTINUE
            origin = Origin(kind, initiator=trial.id, winner=trial.id, replaces=replaces)
            hparams, parent = dict(trial.hparams), trial
        return self.child_or_retire(trial, parent, hparams, origin)

    def replace(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> Spawn | None:
        """Re-run the initiator's step without the failed parent."""
        return self.replace_by(self.step, view, trial, rngs)
