"""Initiator-based evolution (Li et al., KDD 2019), as docs/design.md §7.2 reads it.

Every completed trial becomes an *initiator* exactly once. It draws an opponent uniformly
from the completed trials of its last ``opponent_window`` generations (never itself); the
better of the two (ties: the initiator) is the *winner*, whose checkpoint the child
warm-starts from and whose hyperparameters it copies, optionally crossed over with the
loser's, then mutated. In budget mode an initiator of generation g reproduces only once
generation g has ``population`` completed members (or nothing of it is still running), so a
few workers emulate a large population; meanwhile workers run the other pending trials.
"""

from __future__ import annotations

from pbt_actors.control.policies.policy import Decision, Policy, PopulationView, Retire, RngFactory, Spawn
from pbt_actors.model.records import Origin, OriginKind, Trial


class InitiatorPolicy(Policy):
    """The paper's asynchronous binary tournament."""

    def on_completed(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        if not self.experiment.budget_mode:
            return [self.reproduce(view, trial, rngs)]
        return self._reproduce_ready(view, trial.generation, rngs)

    def on_ended(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        refill = super().on_ended(view, trial, rngs)
        if refill or not self.experiment.budget_mode:
            return refill
        return self._reproduce_ready(view, trial.generation, rngs)  # the loss may complete its generation

    def on_idle(self, view: PopulationView, rngs: RngFactory) -> list[Decision]:
        waiting = view.uninitiated()
        if self.experiment.budget_mode:
            ready = {g for g in {t.generation for t in waiting} if self.generation_ready(view, g)}
            waiting = [t for t in waiting if t.generation in ready]
        return [self.reproduce(view, t, rngs) for t in waiting]

    # --- budget mode ---------------------------------------------------------------------------
    def generation_ready(self, view: PopulationView, generation: int) -> bool:
        """Budget mode's gate: ``population`` completed members, or (when failures thinned it)
        no active trial left in this or any earlier generation that could still add one."""
        if len(view.completed_ids_in(generation, generation)) >= self.experiment.population:
            return True
        return all(t.generation > generation for t in view.active())

    def _reproduce_ready(self, view: PopulationView, generation: int, rngs: RngFactory) -> list[Decision]:
        if not self.generation_ready(view, generation):
            return []
        waiting = [t for t in view.completed_in(generation, generation) if not t.initiated]
        return [self.reproduce(view, t, rngs) for t in waiting]

    # --- the tournament --------------------------------------------------------------------------
    def reproduce(self, view: PopulationView, initiator: Trial, rngs: RngFactory,
                  exclude_parent: int | None = None, replaces: int | None = None) -> Decision:
        """One reproduction of ``initiator``; with ``replaces``, a stand-in for a lost child.

        ``exclude_parent`` removes a trial from the candidates *as a parent* (its checkpoint
        or hyperparameters just produced a FAILED/STOPPED child).
        """
        rng = self.reproduction_rng(rngs, initiator, replaces)
        candidates = [i for i in self.window_ids(view, initiator.generation) if i not in (initiator.id, exclude_parent)]
        opponent = view.trial(candidates[int(rng.integers(len(candidates)))]) if candidates else None
        initiator_usable = initiator.id != exclude_parent
        if opponent is None:
            if not initiator_usable:
                return Retire(initiator.id, "no usable parent left for a replacement")
            winner, loser = initiator, None
        elif not initiator_usable or self.better(view, opponent, initiator):
            winner, loser = opponent, initiator
        else:
            winner, loser = initiator, opponent
        hparams = dict(winner.hparams)
        crossover_id = None
        if loser is not None and self.experiment.crossover_prob > 0 and rng.random() < self.experiment.crossover_prob:
            hparams = self.space.crossover(hparams, loser.hparams, rng)
            crossover_id = loser.id
        if (self.experiment.explore == "always" or winner is not initiator) and self.explores(view, winner):
            hparams = self.explore_hparams(view, hparams, initiator.generation, rng)
        kind = OriginKind.REPLACEMENT if replaces is not None else OriginKind.TOURNAMENT
        origin = Origin(kind, initiator=initiator.id, opponent=opponent.id if opponent else None,
                        winner=winner.id, replaces=replaces)
        return self.child_or_retire(initiator, winner, hparams, origin, crossover_id)

    def replace(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> Spawn | None:
        """Re-run the initiator's tournament without the failed parent."""
        return self.replace_by(self.reproduce, view, trial, rngs)
