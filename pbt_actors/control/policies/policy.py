"""Policy interface: decisions are data, the population is a read-only view.

Layer 3. A policy never touches the store, sockets or files. The controller core hands it a
``PopulationView`` (read-only, over the store) and an ``RngFactory`` that derives a fresh
generator per ``(trial id, decision kind)`` from the experiment seed, and carries out the
``Decision`` objects it returns. Because a policy keeps no state of its own, a controller
restarted from the store asks the same questions and gets the same answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from pbt_actors.control.policies.model_explore import (
    DATA_GENERATIONS,
    Observation,
    fit_and_propose,
    improvement,
    require_sklearn,
)
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fields import HParamValue
from pbt_actors.model.fitness import Metrics
from pbt_actors.model.records import Origin, OriginKind, Trial, TrialSpec, TrialStatus
from pbt_actors.storage.trial_store import TrialStore

RngFactory: TypeAlias = Callable[[int, str], np.random.Generator]


# --- decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spawn:
    """Create a PENDING trial. With ``initiator_id``, the initiator is marked as having
    reproduced in the same transaction, and the spawn is skipped if it already had: this is
    what makes "every completed trial initiates exactly once" hold under duplicate events."""

    spec: TrialSpec
    initiator_id: int | None = None


@dataclass(frozen=True)
class Retire:
    """Mark an initiator as having reproduced without a child (its lineage ends)."""

    initiator_id: int
    reason: str


@dataclass(frozen=True)
class StopTrial:
    """Stop a PENDING or RUNNING trial (early stopping); it becomes STOPPED."""

    trial_id: int
    reason: str


Decision: TypeAlias = Spawn | Retire | StopTrial
Reproduce: TypeAlias = Callable[..., Decision]
"""A policy's reproduction: ``(view, initiator, rngs, *, exclude_parent, replaces) -> Decision``."""


# --- events ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialCompleted:
    """A trial has just become COMPLETED (the view already shows it so)."""

    trial: Trial


@dataclass(frozen=True)
class TrialEnded:
    """A trial has just become FAILED or STOPPED; its slot may need refilling."""

    trial: Trial


@dataclass(frozen=True)
class Idle:
    """Nothing is pending: reproduce anything that is waiting and may now go on."""


Event: TypeAlias = TrialCompleted | TrialEnded | Idle


# --- the read-only view -------------------------------------------------------------------------------
class PopulationView:
    """What a policy may read. Every query is O(result), never a scan of the whole history."""

    def __init__(self, store: TrialStore, experiment: Experiment,
                 committed_steps: Callable[[], int] | None = None) -> None:
        self._store = store
        self.experiment = experiment
        self._committed_steps = committed_steps

    def committed_steps(self) -> int:
        """Steps charged to the budget so far, leased or queued (``control/budget.py``);
        0 when the view was built without a ledger (no budget in play)."""
        return self._committed_steps() if self._committed_steps is not None else 0

    def trial(self, trial_id: int) -> Trial:
        return self._store.get_trial(trial_id)

    def generation(self, generation: int) -> list[Trial]:
        return self._store.trials(self._store.generation(generation)) if generation >= 0 else []

    def completed_ids_in(self, first_generation: int, last_generation: int) -> list[int]:
        """Ids of COMPLETED trials of generations ``[first, last]``, ascending. O(result), and
        no record is decoded: a tournament then reads only the opponent it draws."""
        out: list[int] = []
        for g in range(max(0, first_generation), last_generation + 1):
            out.extend(self._store.completed_in_generation(g))
        return sorted(out)

    def completed_in(self, first_generation: int, last_generation: int) -> list[Trial]:
        """COMPLETED trials of generations ``[first, last]``, by ascending id."""
        return self._store.trials(self.completed_ids_in(first_generation, last_generation))

    def children(self, trial_id: int) -> list[Trial]:
        """Trials warm-started from ``trial_id``."""
        return self._store.trials(self._store.children(trial_id))

    def frontier(self) -> list[Trial]:
        """The current population: the completed trials that active trials continue from.

        O(active trials). This is Jaderberg et al.'s "population" in a trial graph: one latest
        state per live lineage, whatever generation each lineage has reached.
        """
        parents = {t.parent_id for t in self.active() if t.parent_id is not None}
        return self._store.trials(sorted(parents))

    def active(self) -> list[Trial]:
        """PENDING and RUNNING trials (O(active), which is about the population size)."""
        ids = self._store.ids_with_status(TrialStatus.PENDING) + self._store.ids_with_status(TrialStatus.RUNNING)
        return self._store.trials(sorted(ids))

    def uninitiated(self) -> list[Trial]:
        return self._store.trials(self._store.uninitiated())

    def count(self, status: TrialStatus | None = None) -> int:
        return self._store.count(status)


# --- the interface --------------------------------------------------------------------------------------
class Policy(ABC):
    """Decides the initial population and what follows each event. Pure: see module doc."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.space = experiment.space_
        self.objective = experiment.objective_
        if experiment.explore == "model":
            require_sklearn()

    def initial(self, rngs: RngFactory) -> list[Spawn]:
        """Generation 0: the user's explicit configurations first, then prior samples."""
        exp = self.experiment
        spawns = []
        for index in range(exp.population):
            rng = rngs(index, "seed")
            if index < len(exp.initial):
                hparams = self.space.complete(exp.initial[index], rng)
            else:
                hparams = self.space.sample(rng)
            spec = TrialSpec(
                generation=0,
                hparams=hparams,
                start_step=0,
                end_step=min(exp.steps_per_trial, exp.max_steps),
                origin=Origin(OriginKind.SEED),
            )
            spawns.append(Spawn(spec))
        return spawns

    def decide(self, view: PopulationView, event: Event, rngs: RngFactory) -> list[Decision]:
        """Decisions following ``event``; a deterministic function of its inputs.

        One dispatch for every policy; each policy says what a completion means
        (``on_completed``) and how a lost slot is refilled (``replace``).
        """
        if isinstance(event, TrialCompleted):
            return self.on_completed(view, event.trial, rngs)
        if isinstance(event, TrialEnded):
            return self.on_ended(view, event.trial, rngs)
        if isinstance(event, Idle):
            return self.on_idle(view, rngs)
        raise TypeError(f"unknown event {event!r}")

    @abstractmethod
    def on_completed(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        """What follows a completion (the view already shows ``trial`` COMPLETED)."""

    @abstractmethod
    def replace(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> Spawn | None:
        """A stand-in for a FAILED/STOPPED trial, or None when its slot cannot be refilled."""

    def on_ended(self, view: PopulationView, trial: Trial, rngs: RngFactory) -> list[Decision]:
        """Refill the slot of a FAILED/STOPPED trial, at most ``max_replacements`` deep."""
        if self.replacement_depth(view, trial) >= self.experiment.max_replacements:
            return []
        replacement = self.replace(view, trial, rngs)
        return [replacement] if replacement is not None else []

    def on_idle(self, view: PopulationView, rngs: RngFactory) -> list[Decision]:
        """Nothing is pending: handle every completed trial that has not reproduced yet."""
        return [d for t in view.uninitiated() for d in self.on_completed(view, t, rngs)]

    # --- shared building blocks ----------------------------------------------------------------
    def child_spec(
        self,
        parent: Trial,
        hparams: Mapping[str, HParamValue],
        generation: int,
        origin: Origin,
        crossover_id: int | None = None,
    ) -> TrialSpec | None:
        """The spec continuing ``parent``'s weights, or None when its lineage is over."""
        start = parent.end_step
        if start >= self.experiment.max_steps:
            return None
        end = min(start + self.experiment.steps_per_trial, self.experiment.max_steps)
        return TrialSpec(
            generation=generation,
            hparams=hparams,
            start_step=start,
            end_step=end,
            origin=origin,
            parent_id=parent.id,
            crossover_id=crossover_id,
        )

    def explore_hparams(self, view: PopulationView, hparams: Mapping[str, HParamValue], generation: int,
                        rng: np.random.Generator) -> dict[str, HParamValue]:
        """A child's explored hyperparameters (generation ``generation + 1``, from ``hparams``):
        the mutation rules (§7.3), or with ``explore="model"`` the GP-UCB bandit's proposal
        (``model_explore``; the mutation rules while it has too few observations)."""
        if self.experiment.explore == "model":
            proposal = fit_and_propose(self.space, self.observations(view, generation), hparams, generation, rng)
            if proposal is not None:
                return proposal
        return self.space.mutate(hparams, rng, self.experiment.resample_prob)

    def observations(self, view: PopulationView, generation: int) -> list[Observation]:
        """The bandit's data: every completed continuation of the last ``DATA_GENERATIONS``
        generations up to ``generation``, with its gain over its parent, by ascending id."""
        out = []
        for trial in view.completed_in(generation - DATA_GENERATIONS + 1, generation):
            if trial.parent_id is None:
                continue
            gain = improvement(self.objective, trial, view.trial(trial.parent_id))
            if gain is not None:
                out.append(Observation(trial.hparams, trial.generation, gain))
        return out

    def explores(self, view: PopulationView, parent: Trial) -> bool:
        """May a child continuing ``parent`` mutate? Always with ``explore_final``; otherwise not
        in its lineage's last trial, where no later tournament could judge the mutation: the
        child ends at ``max_steps``, or the budget left cannot pay for two more generations
        (the child's and one after it)."""
        exp = self.experiment
        if exp.explore_final:
            return True
        if parent.end_step + exp.steps_per_trial >= exp.max_steps:
            return False
        if exp.budget_steps is not None:
            # Left for this child's generation *and* a next one. Not "after this child": the
            # spawns of one decision (a budget-mode generation) all see the same committed sum.
            left = exp.budget_steps - view.committed_steps()
            return left >= 2 * exp.population * exp.steps_per_trial
        return True

    def child_or_retire(self, initiator: Trial, parent: Trial, hparams: Mapping[str, HParamValue], origin: Origin,
                        crossover_id: int | None = None) -> Decision:
        """``initiator``'s child continuing ``parent``'s weights, or its lineage's end at
        ``max_steps``. A stand-in for a lost child (``origin.replaces``) does not mark the
        initiator as having reproduced: it already has."""
        spec = self.child_spec(parent, hparams, initiator.generation + 1, origin, crossover_id)
        if spec is None:
            return Retire(initiator.id, f"lineage reached max_steps ({self.experiment.max_steps})")
        return Spawn(spec, initiator_id=None if origin.replaces is not None else initiator.id)

    @staticmethod
    def reproduction_rng(rngs: RngFactory, initiator: Trial, replaces: int | None) -> np.random.Generator:
        """The generator of one reproduction of ``initiator``, or of a stand-in for ``replaces``."""
        return rngs(replaces, "replace") if replaces is not None else rngs(initiator.id, "reproduce")

    def replace_by(self, reproduce: Reproduce, view: PopulationView, trial: Trial, rngs: RngFactory) -> Spawn | None:
        """A stand-in for ``trial``: its initiator reproduces again without ``trial``'s parent as
        a parent (a generation-0 trial is reseeded); None when that reproduction retires."""
        if trial.origin.initiator is None:
            return self.reseed(trial, rngs)
        decision = reproduce(view, view.trial(trial.origin.initiator), rngs,
                             exclude_parent=trial.parent_id, replaces=trial.id)
        return decision if isinstance(decision, Spawn) else None

    def replacement_depth(self, view: PopulationView, trial: Trial) -> int:
        """How many replacements deep ``trial`` is (a replacement of a replacement is 2)."""
        depth, current = 0, trial
        while current.origin.kind is OriginKind.REPLACEMENT and current.origin.replaces is not None:
            depth += 1
            current = view.trial(current.origin.replaces)
        return depth

    def reseed(self, trial: Trial, rngs: RngFactory) -> Spawn:
        """A fresh prior sample standing in for a failed generation-0 trial."""
        spec = TrialSpec(
            generation=trial.generation,
            hparams=self.space.sample(rngs(trial.id, "replace")),
            start_step=trial.start_step,
            end_step=trial.end_step,
            origin=Origin(OriginKind.REPLACEMENT, replaces=trial.id),
        )
        return Spawn(spec)

    def window(self, view: PopulationView, generation: int) -> list[Trial]:
        """Completed trials of the last ``opponent_window`` generations up to ``generation``."""
        return view.completed_in(generation - self.experiment.opponent_window + 1, generation)

    def window_ids(self, view: PopulationView, generation: int) -> list[int]:
        return view.completed_ids_in(generation - self.experiment.opponent_window + 1, generation)

    def better(self, view: PopulationView, a: Trial, b: Trial) -> bool:
        """Strictly better by the objective's fitness (ties and incomparable pairs are not)."""
        return self.objective.compare(self.fitness(view, a), self.fitness(view, b)) > 0

    def fitness(self, view: PopulationView, trial: Trial) -> Metrics | None:
        """What exploit compares: ``trial.final``, or with ``Objective(smoothing=k)`` the mean of
        the lineage's last ``k`` reports (``lineage_reports``, then ``Objective.smooth``)."""
        if self.objective.smoothing <= 1:
            return trial.final
        return self.objective.smooth(lineage_reports(view, trial, self.objective.smoothing))


def lineage_reports(view: PopulationView, trial: Trial, k: int) -> list[Metrics | None]:
    """The last ``k`` reports of ``trial``'s lineage, oldest first, ending with its final metrics.

    A trial's reports are its measurements before its end step, then its final metrics (which
    stand for the end-step measurement: they may come from a larger evaluation). Ancestors
    (``parent_id``: the checkpoint it continued) are read only while fewer than ``k`` are found,
    so this costs ``ceil(k / steps_per_trial)`` record reads.
    """
    reports: list[Metrics | None] = []
    current: Trial | None = trial
    while current is not None and len(reports) < k:
        own: list[Metrics | None] = [dict(m.metrics) for m in current.measurements if m.step < current.end_step]
        own.append(current.final)
        reports = own + reports
        current = view.trial(current.parent_id) if current.parent_id is not None else None
    return reports[-k:]
