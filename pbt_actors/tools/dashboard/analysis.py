"""Trial analysis for the dashboard: the trials table, parallel coordinates, hyperparameter
importance and the Pareto front, built from the ``StoreIndex`` rows (no store scan).

PBT's trials are short and each has its own hyperparameters, so every view here pairs a trial's
*own* hyperparameters with its *own* result (never a lineage's starting values with its final
result, which credits the seed for what exploit and explore did later). Each answer is bounded:
the table is paged on the server, the plots sample at most ``PLOT_LIMIT`` trials (the best ones
always kept), and importance fits on at most ``FIT_LIMIT``. Callers hold ``index.lock``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pbt_actors.model.ranking import BestEntry, pareto_front
from pbt_actors.model.space import Categorical, Float, Int
from pbt_actors.tools.dashboard.index import Row, StoreIndex

TABLE_LIMIT = 200
PLOT_LIMIT = 3000
FIT_LIMIT = 2000
IMPORTANCE_TREES = 48
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|=|<|>)\s*(\S+)\s*$")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def hparam_names(index: StoreIndex) -> list[str]:
    return list(index.experiment.space_.keys()) if index.experiment is not None else []


def log_names(index: StoreIndex) -> list[str]:
    """Hyperparameters declared with ``log=True`` (drawn on log axes)."""
    if index.experiment is None:
        return []
    return [n for n, p in index.experiment.space_.items() if isinstance(p, Float | Int) and p.log]


# --- the table ------------------------------------------------------------------------------------
def _matches(row: Row, clauses: list[tuple[str, str, str]], words: list[str]) -> bool:
    for name, op, raw in clauses:
        if name in ("id", "trial"):
            value: Any = row.id
        elif name in ("gen", "generation"):
            value = row.generation
        elif name == "value":
            value = row.value
        elif name == "step":
            value = row.end
        elif name in ("status", "worker"):
            value = getattr(row, name)
        elif name in row.hparams:
            value = row.hparams[name]
        elif row.final is not None and name in row.final:
            value = row.final[name]
        else:
            return False
        number = _num(value)
        try:
            target: Any = float(raw) if number is not None else raw
        except ValueError:
            return False
        left: Any = number if number is not None else str(value)
        ok = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
              ">=": lambda a, b: a >= b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b}[op]
        try:
            if value is None or not ok(left, target):
                return False
        except TypeError:
            return False
    text = f"#{row.id} {row.status} {row.worker or ''}".lower()
    return all(w in text for w in words)


def parse_filter(query: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``lr<0.01, status=completed worker-3`` -> comparisons and free words (ANDed)."""
    clauses: list[tuple[str, str, str]] = []
    words: list[str] = []
    for part in (p for p in re.split(r"[,;]", query) if p.strip()):
        m = _FILTER.match(part)
        if m:
            clauses.append((m.group(1), m.group(2), m.group(3)))
        else:
            words += part.lower().split()
    return clauses, words


def _sort_key(name: str) -> Any:
    def key(row: Row) -> tuple[int, Any]:
        if name in ("id", "generation", "status", "worker", "value", "end", "failed_attempts"):
            value = getattr(row, name)
        elif name.startswith("hp:"):
            value = row.hparams.get(name[3:])
        elif name.startswith("m:"):
            value = row.final.get(name[2:]) if row.final else None
        else:
            value = row.id
        number = _num(value)
        if number is not None:
            return (0, number)
        return (1, "") if value is None else (0, str(value)) if isinstance(value, str) else (1, "")
    return key


def trials_table(index: StoreIndex, sort: str = "id", desc: bool = False, query: str = "",
                 offset: int = 0, limit: int = TABLE_LIMIT) -> dict[str, Any]:
    """One page of the trials, filtered and sorted on the server (a 100k store sends a page)."""
    clauses, words = parse_filter(query)
    rows = [r for r in index.rows if _matches(r, clauses, words)] if clauses or words else list(index.rows)
    key = _sort_key(sort)
    if sort != "id" or desc:
        present = [r for r in rows if key(r)[0] == 0]
        missing = [r for r in rows if key(r)[0] != 0]
        present.sort(key=key, reverse=desc)
        rows = present + missing  # no value last, whichever way
    limit = max(1, min(limit, TABLE_LIMIT))
    offset = max(0, offset)
    metrics = list(index.experiment.objective_.names) if index.experiment is not None else []
    page = [{"trial_id": r.id, "status": r.status, "generation": r.generation, "worker": r.worker,
             "start": r.start, "end": r.end, "value": r.value, "failed_attempts": r.failed_attempts,
             "hparams": {k: _plain(v) for k, v in r.hparams.items()},
             "final": {k: _plain(v) for k, v in r.final.items()} if r.final else None}
            for r in rows[offset:offset + limit]]
    return {"total": len(index.rows), "matched": len(rows), "offset": offset, "rows": page,
            "hparams": hparam_names(index), "metrics": metrics, "sort": sort, "desc": desc}


# --- trials for the plots ---------------------------------------------------------------------------
def completed(index: StoreIndex) -> list[Row]:
    return [r for r in index.rows if r.fitness is not None]


def sample(rows: list[Row], limit: int) -> list[Row]:
    """At most ``limit`` rows, deterministic: the best tenth always, the rest evenly spaced."""
    if len(rows) <= limit:
        return rows
    best = sorted(rows, key=lambda r: -(r.fitness or -math.inf))[: limit // 10]
    keep = {r.id for r in best}
    rest = [r for r in rows if r.id not in keep]
    stride = len(rest) / (limit - len(best))
    chosen = [rest[int(i * stride)] for i in range(limit - len(best))]
    return sorted(best + chosen, key=lambda r: r.id)


def _encode(index: StoreIndex, rows: list[Row]) -> tuple[list[str], list[list[float | None]], dict[str, list[str]]]:
    """Each hyperparameter as numbers: log10 for log-scale ones, category codes for choices."""
    names = hparam_names(index)
    space = index.experiment.space_ if index.experiment is not None else {}
    logs = set(log_names(index))
    columns: list[list[float | None]] = []
    categories: dict[str, list[str]] = {}
    for name in names:
        param = space.get(name)
        values = [r.hparams.get(name) for r in rows]
        if isinstance(param, Categorical) or any(isinstance(v, str) for v in values):
            choices = [str(c) for c in param.choices] if isinstance(param, Categorical) else sorted(
                {str(v) for v in values})
            categories[name] = choices
            columns.append([float(choices.index(str(v))) if str(v) in choices else None for v in values])
        elif name in logs:
            columns.append([math.log10(v) if (v := _num(x)) is not None and v > 0 else None for x in values])
        else:
            columns.append([_num(x) for x in values])
    return names, columns, categories


def parallel(index: StoreIndex) -> dict[str, Any]:
    """Each completed trial's own hyperparameters and its own result (and the step it ended at)."""
    rows = sample(completed(index), PLOT_LIMIT)
    names, columns, categories = _encode(index, rows)
    return {"completed": len(completed(index)), "shown": len(rows), "ids": [r.id for r in rows],
            "hparams": [{"name": n, "values": c, "log": n in log_names(index), "categories": categories.get(n)}
                        for n, c in zip(names, columns, strict=True)],
            "step": [r.end for r in rows], "value": [r.value for r in rows], "best": index.best_id}


def importance(index: StoreIndex) -> dict[str, Any]:
    """How much each hyperparameter explains a trial's result: scikit-learn's random forest
    (impurity importance, fixed ``random_state``) fitted on each completed trial's own
    hyperparameters and the step it ended at, against its fitness. The step is a feature on
    purpose: in PBT later trials score higher whatever their hyperparameters, and without it the
    forest would credit whichever hyperparameter drifted over time."""
    rows = completed(index)
    if len(rows) < 8:
        return {"fitted_on": len(rows), "importance": [], "reason": "fewer than 8 completed trials"}
    rows = sample(rows, FIT_LIMIT)
    names, columns, _ = _encode(index, rows)
    varying = [i for i, c in enumerate(columns) if len({v for v in c if v is not None}) > 1]
    if not varying:
        return {"fitted_on": len(rows), "importance": [], "reason": "no hyperparameter varies"}
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    features = [[(columns[i][k] if columns[i][k] is not None else np.nan) for i in varying] + [float(r.end)]
                for k, r in enumerate(rows)]
    x = np.asarray(features, dtype=float)
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    y = np.asarray([r.fitness for r in rows], dtype=float)
    forest = RandomForestRegressor(n_estimators=IMPORTANCE_TREES, min_samples_leaf=2, random_state=0, n_jobs=1)
    forest.fit(x, y)
    labels = [names[i] for i in varying] + ["(step)"]
    pairs = sorted(zip(labels, forest.feature_importances_.tolist(), strict=True), key=lambda p: -p[1])
    return {"fitted_on": len(rows), "method": "random forest, impurity importance (scikit-learn)",
            "importance": [{"name": n, "importance": round(v, 6)} for n, v in pairs]}


# --- several objectives ----------------------------------------------------------------------------
def pareto(index: StoreIndex) -> dict[str, Any]:
    """Completed trials' objective metrics and the non-dominated front (the store's front index
    for a Pareto objective, ``model.ranking.pareto_front`` for a weighted one)."""
    exp = index.experiment
    if exp is None or len(exp.objective_.names) < 2:
        return {"metrics": list(exp.objective_.names) if exp else [], "points": [], "front": []}
    objective = exp.objective_
    names = list(objective.names)
    rows = [r for r in completed(index) if r.final is not None and all(_num(r.final.get(n)) is not None for n in names)]
    if objective.comparison == "pareto":
        front = index.store.best_ranked(objective, limit=2000)
    else:
        entries = [BestEntry(r.fitness or 0.0, r.id, objective.oriented(r.final) or ()) for r in rows]
        front = [e.trial_id for e in pareto_front(entries)]
    front_set = set(front)
    shown = sample(rows, PLOT_LIMIT)
    shown_ids = {r.id for r in shown}
    shown += [r for r in rows if r.id in front_set and r.id not in shown_ids]
    return {"metrics": names, "goals": [m.goal for m in objective.metrics], "comparison": objective.comparison,
            "points": [{"trial_id": r.id, "values": [r.final[n] for n in names] if r.final else []} for r in shown],
            "front": front, "completed": len(rows)}
