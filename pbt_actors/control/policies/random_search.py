"""The no-exploit baseline: every lineage keeps its sampled hyperparameters to the end.

It runs through the same trial machinery as PBT (short trials, checkpoints, retries), so a
comparison against it measures exactly what exploit/explore adds at equal compute.
"""

from __future__ import annotations

from pbt_actors.control.policies.policy import Decision, Policy, PopulationView, RngFactory, Spawn
from pbt_actors.model.records import Origin, OriginKind, Trial


class RandomPolicy(Policy):
    """Continue each lineage unchanged; a failed seed is resampled, a failed child retried."""

    def on_completed(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        return [self.continue_(trial)]

    def continue_(self, trial: Trial) -> Decision:
        origin = Origin(OriginKind.CONTINUE, initiator=trial.id, winner=trial.id)
        return self.child_or_retire(trial, trial, dict(trial.hparams), origin)

    def replace(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> Spawn | None:
        if trial.parent_id is None:
            return self.reseed(trial, rngs)
        parent = view.trial(trial.parent_id)
        origin = Origin(OriginKind.REPLACEMENT, initiator=trial.origin.initiator, winner=parent.id,
                        replaces=trial.id)
        spec = self.child_spec(parent, dict(trial.hparams), trial.generation, origin)
        return Spawn(spec) if spec is not None else None
