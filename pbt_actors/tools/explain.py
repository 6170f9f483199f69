"""Why a trial exists, in one line: who it played, who won, what it copied and what explore changed.

Layer 5 (a face): reads trials, never writes. The store records each decision's inputs (the
trial's ``origin``: initiator, opponent, winner; its ``parent_id`` and ``crossover_id``) and its
output (the trial's ``hparams``), not the explore step's coin flips; ``explain`` recovers them:
a hyperparameter that differs from what the trial copied is *perturbed* when the new value is
one of the values the parameter's ``perturb`` can give from the old one (``model.space``'s
factors, or a ``Discrete`` neighbour), else *resampled* from the prior. Used by the dashboard's
details panel and by ``pbt-actors lineage``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import OriginKind, Trial
from pbt_actors.model.space import (
    LOG_PERTURB_FACTOR,
    PERTURB_FACTORS,
    Categorical,
    Discrete,
    Fixed,
    Float,
    Int,
    Param,
    SearchSpace,
)


@dataclass(frozen=True)
class Change:
    """One hyperparameter as explore left it: ``how`` is ``perturbed``, ``resampled``,
    ``crossover`` (taken from the crossover source, unexplored) or ``kept``."""

    name: str
    before: Any
    after: Any
    how: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "before": self.before, "after": self.after, "how": self.how}


@dataclass(frozen=True)
class Explanation:
    """The decision that made a trial, as structured data and as ``text`` (one line)."""

    trial_id: int
    kind: str
    initiator: int | None = None
    opponent: int | None = None
    winner: int | None = None
    initiator_value: Mapping[str, float] | None = None
    opponent_value: Mapping[str, float] | None = None
    parent: int | None = None
    crossover: int | None = None
    replaces: int | None = None
    changes: tuple[Change, ...] = field(default_factory=tuple)
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "kind": self.kind, "initiator": self.initiator,
                "opponent": self.opponent, "winner": self.winner, "initiator_value": self.initiator_value,
                "opponent_value": self.opponent_value, "parent": self.parent, "crossover": self.crossover,
                "replaces": self.replaces, "changes": [c.to_dict() for c in self.changes], "text": self.text}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def perturb_results(param: Param, value: Any) -> list[Any]:
    """Every value ``param.perturb(value, rng)`` can return (it flips one coin: up or down)."""
    if isinstance(param, Float):
        if param.log:
            base = math.log(max(float(value), param.low))
            return [param.clip(math.exp(base + s * math.log(LOG_PERTURB_FACTOR))) for s in (-1, 1)]
        return [param.clip(float(value) * f) for f in PERTURB_FACTORS]
    if isinstance(param, Int):
        out = []
        for up in (False, True):
            current = int(value)
            raw = (max(current, param.low) * (LOG_PERTURB_FACTOR if up else 1 / LOG_PERTURB_FACTOR) if param.log
                   else current * PERTURB_FACTORS[1 if up else 0])
            new = round(raw)
            if new == current:
                new = current + (1 if up else -1)
            out.append(param.clip(new))
        return out
    if isinstance(param, Discrete):
        try:
            i = min(range(len(param.values)), key=lambda k: abs(float(param.values[k]) - float(value)))
        except (TypeError, ValueError):
            return []
        return [param.values[j] for j in (i - 1, i + 1) if 0 <= j < len(param.values)]
    return []  # Categorical and Fixed: perturb resamples or keeps


def classify(param: Param | None, before: Any, after: Any) -> str:
    """``kept``, ``perturbed`` or ``resampled``: how explore turned ``before`` into ``after``."""
    if _close(before, after):
        return "kept"
    if param is None or isinstance(param, Categorical | Fixed):
        return "resampled"
    return "perturbed" if any(_close(after, v) for v in perturb_results(param, before)) else "resampled"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _value_text(values: Mapping[str, float] | None, objective: Objective | None) -> str:
    if values is None:
        return "no result"
    names = list(objective.names) if objective is not None else list(values)
    shown = [f"{n}={fmt(values[n])}" for n in names if n in values]
    return " ".join(shown) if shown else "no result"


def explain(trial: Trial, find: Callable[[int], Trial | None], objective: Objective | None = None,
            space: SearchSpace | None = None) -> Explanation:
    """Why ``trial`` exists; ``find`` reads another trial by id (None when it is not there)."""
    origin = trial.origin
    kind = origin.kind.value
    parent = find(trial.parent_id) if trial.parent_id is not None else None
    source = find(trial.crossover_id) if trial.crossover_id is not None else None
    initiator = find(origin.initiator) if origin.initiator is not None else None
    opponent = find(origin.opponent) if origin.opponent is not None else None
    params: Mapping[str, Param] = space if space is not None else {}
    changes: list[Change] = []
    if parent is not None:
        for name, after in trial.hparams.items():
            before = parent.hparams.get(name)
            how = classify(params.get(name), before, after)
            if how != "kept" and source is not None and _close(source.hparams.get(name), after):
                how = "crossover"
            changes.append(Change(name, before, after, how))
    parts: list[str] = [f"#{trial.id}: {kind}"]
    if origin.kind is OriginKind.SEED:
        parts.append("sampled from the prior or given in `initial`; trained from scratch")
    if origin.replaces is not None:
        parts.append(f"stands in for failed/stopped #{origin.replaces}")
    if origin.opponent is not None:
        won = "initiator" if origin.winner == origin.initiator else "opponent"
        parts.append(f"initiator #{origin.initiator} ({_value_text(initiator.final if initiator else None, objective)})"
                     f" vs opponent #{origin.opponent} ({_value_text(opponent.final if opponent else None, objective)})"
                     f" -> {won} #{origin.winner} won")
    elif origin.kind in (OriginKind.TOURNAMENT, OriginKind.REPLACEMENT) and origin.initiator is not None:
        parts.append(f"initiator #{origin.initiator} "
                     f"({_value_text(initiator.final if initiator else None, objective)}) had no opponent in its "
                     "window and reproduced itself")
    elif origin.kind is OriginKind.TRUNCATION and origin.initiator is not None:
        parts.append(f"#{origin.initiator} ({_value_text(initiator.final if initiator else None, objective)}) was in "
                     f"the bottom quantile and copies top member #{origin.winner}")
    if trial.parent_id is not None:
        parts.append(f"warm-started from #{trial.parent_id}" + (f", crossover with #{trial.crossover_id}"
                                                                   if trial.crossover_id is not None else ""))
    elif origin.kind is not OriginKind.SEED:
        parts.append("trained from scratch")
    moved = [c for c in changes if c.how != "kept"]
    if parent is not None:
        parts.append("explore: " + (", ".join(f"{c.name} {fmt(c.before)} -> {fmt(c.after)} ({c.how})" for c in moved)
                                    if moved else "none (hyperparameters copied unchanged)"))
    return Explanation(trial.id, kind, origin.initiator, origin.opponent, origin.winner,
                       dict(initiator.final) if initiator and initiator.final else None,
                       dict(opponent.final) if opponent and opponent.final else None,
                       trial.parent_id, trial.crossover_id, origin.replaces, tuple(changes), "; ".join(parts))
