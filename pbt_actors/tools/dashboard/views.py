"""The JSON the dashboard page asks for, built from a ``StoreIndex``.

Every answer is bounded whatever the store's size, so the page opens in the same time on a
hundred trials and on a hundred thousand: the population now, the best trial's ancestry, a
curve that is drawn trial by trial up to ``SEGMENT_LIMIT`` completed trials and as a quantile
band above that, and a tree that is whole up to ``TREE_FULL_LIMIT`` trials and otherwise the
ancestries of the best trial and of the population, grown on demand around a clicked trial.
Callers hold ``index.lock``.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from pbt_actors.model.fields import is_number
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.tools.command_outputs import attempt_outputs
from pbt_actors.tools.dashboard.index import Row, StoreIndex

SEGMENT_LIMIT = 3000
"""Up to this many completed trials the chart draws every trial; above, a quantile band."""
TREE_FULL_LIMIT = 2000
"""Up to this many trials the tree is sent whole; above, ancestries plus what the user opens."""
BAND_BINS = 120
POPULATION_LINES = 12
NEIGHBOURHOOD_LIMIT = 400
POPULATION_ANCESTRY = 12
"""Generations of each population member's ancestry in a partial tree's first view."""
UPDATES_LIMIT = 500
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
FAILURES_SHOWN = 50


def _num(value: Any) -> float | None:
    """A JSON-safe number (strict JSON has no NaN/inf)."""
    if is_number(value) and math.isfinite(value):
        return float(value)
    return None


def _hparams(values: Any) -> dict[str, Any]:
    return {k: _num(v) if isinstance(v, float) else v for k, v in values.items()}


def _metrics(values: Any) -> dict[str, float | None] | None:
    return None if values is None else {k: _num(v) for k, v in values.items()}


def node(row: Row) -> list[Any]:
    """A tree node, compact: ``[id, parent, generation, start, end, value, status, lineage]``."""
    return [row.id, row.parent, row.generation, row.start, row.end, row.value, row.status, row.lineage]


# --- the overview ---------------------------------------------------------------------------------
def population(index: StoreIndex) -> list[dict[str, Any]]:
    out = []
    now = time.time()
    for row in index.population():
        trial = index.store.find_trial(row.id)
        if trial is None:
            continue
        last = trial.measurements[-1] if trial.measurements else None
        out.append({
            "trial_id": trial.id, "generation": trial.generation, "status": trial.status.value,
            "start_step": trial.start_step, "end_step": trial.end_step, "parent_id": trial.parent_id,
            "worker": trial.worker or (trial.lease.worker if trial.lease else row.worker),
            "hparams": _hparams(trial.hparams),
            "value": row.value, "at_step": last.step if last else None,
            "last": _metrics(last.metrics) if last else None, "final": _metrics(trial.final),
            "elapsed_s": round(now - trial.started_at, 1) if trial.started_at and not trial.status.terminal else None,
        })
    return out


def updates(index: StoreIndex, cursor: int) -> dict[str, Any]:
    """The summary plus the trials that ended after ``cursor`` (the page's incremental poll)."""
    cursor = max(0, min(cursor, len(index.done_order)))
    ended = index.done_order[cursor:cursor + UPDATES_LIMIT]
    return {"summary": index.summary(), "ended": [node(index.rows[i - 1]) for i in ended],
            "cursor": cursor + len(ended), "more": cursor + len(ended) < len(index.done_order)}


# --- the fitness chart ------------------------------------------------------------------------------
def _chain_points(index: StoreIndex, chain: list[int], with_measurements: bool) -> tuple[list[Any], list[Any]]:
    xs: list[Any] = []
    ys: list[Any] = []
    single = index.experiment is not None and len(index.experiment.objective_.names) == 1
    name = index.experiment.objective_.names[0] if index.experiment is not None else ""
    for trial_id in chain:
        row = index.rows[trial_id - 1]
        if with_measurements and single:
            trial = index.store.find_trial(trial_id)
            for m in trial.measurements if trial is not None else ():
                v = _num(m.metrics.get(name))
                if v is not None and m.step < row.end:
                    xs.append(m.step)
                    ys.append(v)
        if row.value is not None:
            xs.append(row.end)
            ys.append(row.value)
    return xs, ys


def curves(index: StoreIndex) -> dict[str, Any]:
    """Background (every trial, or a band), the population's ancestries and the best lineage."""
    completed = [r for r in index.rows if r.value is not None]
    out: dict[str, Any] = {"mode": "segments" if len(completed) <= SEGMENT_LIMIT else "band",
                           "completed": len(completed)}
    if out["mode"] == "segments":
        xs: list[Any] = []
        ys: list[Any] = []
        for row in completed:
            parent = index.row(row.parent) if row.parent is not None else None
            if parent is not None and parent.value is not None:
                xs += [parent.end, row.end, None]
                ys += [parent.value, row.value, None]
            else:
                xs += [row.end, None]
                ys += [row.value, None]
        out["segments"] = {"x": xs, "y": ys}
    else:
        out["band"] = _band(completed)
    pop = sorted((r for r in index.population() if r.value is not None or r.parent is not None),
                 key=lambda r: -(r.value if r.value is not None else -math.inf))[:POPULATION_LINES]
    lines = []
    for row in pop:
        tip = row if row.value is not None else index.row(row.parent) if row.parent is not None else None
        if tip is None:
            continue
        chain = index.ancestry(tip.id)
        x, y = _chain_points(index, chain[-60:], with_measurements=False)
        lines.append({"trial_id": row.id, "lineage": row.lineage, "x": x, "y": y})
    out["population"] = lines
    if index.best_id is not None:
        chain = index.ancestry(index.best_id)
        x, y = _chain_points(index, chain, with_measurements=len(chain) <= 400)
        out["best"] = {"trial_id": index.best_id, "x": x, "y": y, "length": len(chain)}
    return out


def _band(rows: list[Row]) -> dict[str, Any]:
    """Per step bin: the 0/10/50/90/100 % quantiles of the completed trials' values."""
    lo = min(r.end for r in rows)
    hi = max(r.end for r in rows)
    width = max(1.0, (hi - lo) / BAND_BINS)
    bins: dict[int, list[float]] = {}
    for r in rows:
        assert r.value is not None
        bins.setdefault(int((r.end - lo) / width), []).append(r.value)
    out: dict[str, list[Any]] = {"x": [], "min": [], "p10": [], "p50": [], "p90": [], "max": [], "n": []}
    for b in sorted(bins):
        values = sorted(bins[b])
        n = len(values)
        out["x"].append(round(lo + (b + 0.5) * width, 2))
        out["min"].append(values[0])
        out["p10"].append(values[int(0.1 * (n - 1))])
        out["p50"].append(values[int(0.5 * (n - 1))])
        out["p90"].append(values[int(0.9 * (n - 1))])
        out["max"].append(values[-1])
        out["n"].append(n)
    return out


# --- the lineage tree -------------------------------------------------------------------------------
def tree(index: StoreIndex) -> dict[str, Any]:
    """The tree's first view: whole when small, else the ancestries that matter."""
    total = len(index.rows)
    if total <= TREE_FULL_LIMIT:
        return {"complete": True, "total": total, "nodes": [node(r) for r in index.rows], "best": index.best_id}
    ids: set[int] = set()
    if index.best_id is not None:
        ids.update(index.ancestry(index.best_id))
    for row in index.population():
        ids.update(index.ancestry(row.id)[-POPULATION_ANCESTRY:])
    return {"complete": False, "total": total, "best": index.best_id,
            "nodes": [node(index.rows[i - 1]) for i in sorted(ids)]}


def neighbourhood(index: StoreIndex, trial_id: int) -> dict[str, Any]:
    """A clicked trial's ancestry, its children and grandchildren, and its ancestors' other
    children (breadth first, at most ``NEIGHBOURHOOD_LIMIT`` nodes)."""
    if index.row(trial_id) is None:
        return {"nodes": []}
    ids: list[int] = index.ancestry(trial_id)[-100:]
    seen = set(ids)
    queue: deque[tuple[int, int]] = deque((a, 1) for a in reversed(ids))
    while queue and len(ids) < NEIGHBOURHOOD_LIMIT:
        current, depth = queue.popleft()
        for child in index.children.get(current, []):
            if child not in seen:
                seen.add(child)
                ids.append(child)
                if current == trial_id and depth < 3:
                    queue.append((child, depth + 1))
                if len(ids) >= NEIGHBOURHOOD_LIMIT:
                    break
    return {"nodes": [node(index.rows[i - 1]) for i in sorted(ids)]}


# --- one trial --------------------------------------------------------------------------------------
def trial_details(index: StoreIndex, trial_id: int, store_dir: Path) -> dict[str, Any] | None:
    trial = index.store.find_trial(trial_id)
    if trial is None:
        return None
    row = index.row(trial_id)
    checkpoint = None
    if trial.checkpoint is not None:
        checkpoint = {**trial.checkpoint.to_dict(), "path": str(store_dir / "checkpoints" / trial.checkpoint.uri)}
    return {
        "trial_id": trial.id, "generation": trial.generation, "status": trial.status.value,
        "hparams": _hparams(trial.hparams),
        "parent_id": trial.parent_id, "crossover_id": trial.crossover_id, "origin": trial.origin.to_dict(),
        "start_step": trial.start_step, "end_step": trial.end_step, "attempt": trial.attempt,
        "worker": row.worker if row else trial.worker, "value": row.value if row else None,
        "lineage": row.lineage if row else None, "final": _metrics(trial.final),
        "measurements": [[m.step, _metrics(m.metrics)] for m in trial.measurements[-200:]],
        "checkpoint": checkpoint, "error": trial.error, "stop_reason": trial.stop_reason,
        "created_at": trial.created_at, "started_at": trial.started_at, "ended_at": trial.ended_at,
        "children": index.children.get(trial.id, [])[:50], "is_best": trial.id == index.best_id,
        "log": log_tail(store_dir, row.worker if row else trial.worker),
        "output": _outputs(index, trial, store_dir),
    }


def _outputs(index: StoreIndex, trial: Trial, store_dir: Path) -> list[dict[str, Any]]:
    """A command trial's attempts' kept stdout/stderr (``tools.command_outputs``); [] otherwise."""
    experiment = index.experiment
    if experiment is None or experiment.command is None:
        return []
    return attempt_outputs(store_dir / "checkpoints", experiment.name, trial)


def log_tail(store_dir: Path, worker: str | None) -> dict[str, Any] | None:
    """The last lines of the worker's log (``<store>/logs/<worker>.log``, written by ``run``)."""
    if not worker:
        return None
    safe = "".join(c for c in worker if c.isalnum() or c in "-_.")
    if not safe or safe.startswith("."):
        return None
    # ``run`` names a worker's log after its slot (``vm-w0``); the worker's own name may add a
    # per-process suffix (``vm-w0-a07d25``): try the name, then without its last part
    names = [safe, safe.rsplit("-", 1)[0]] if "-" in safe else [safe]
    path = next((store_dir / "logs" / f"{n}.log" for n in names if (store_dir / "logs" / f"{n}.log").is_file()), None)
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    return {"path": str(path), "lines": text.splitlines()[-LOG_TAIL_LINES:]}


def schedule(index: StoreIndex) -> dict[str, Any] | None:
    """The best trial's hyperparameter schedule: one segment per trial of its ancestry."""
    if index.best_id is None:
        return None
    chain = index.ancestry(index.best_id)
    if len(chain) > 2000:
        chain = chain[-2000:]
    segments = []
    for trial in index.store.trials(chain):
        segments.append({"trial_id": trial.id, "start": trial.start_step, "end": trial.end_step,
                         "hparams": _hparams(trial.hparams)})
    return {"trial_id": index.best_id, "segments": segments}


# --- workers and failures ---------------------------------------------------------------------------
def workers(index: StoreIndex, host_states: list[dict[str, Any]]) -> dict[str, Any]:
    now = time.time()
    running: dict[str, Row] = {}
    for trial_id in index.active:
        row = index.rows[trial_id - 1]
        if row.status == TrialStatus.RUNNING.value and row.worker:
            running[row.worker] = row
    names = sorted(set(index.workers) | set(running), key=_natural)
    t_end = now if not index.finished else max((s.last_end for s in index.workers.values()), default=now)
    out = []
    for name in names[:500]:
        stats = index.workers.get(name)
        current = running.get(name)
        busy = stats.busy_s if stats else 0.0
        first = stats.first_start if stats else math.inf
        if current is not None and current.started_at is not None:
            busy += max(0.0, now - current.started_at)
            first = min(first, current.started_at)
        span = t_end - first if math.isfinite(first) else 0.0
        out.append({"worker": name, "trials": stats.trials if stats else 0, "failed": stats.failed if stats else 0,
                    "busy_s": round(busy, 1), "utilisation": _num(min(1.0, busy / span)) if span > 0 else None,
                    "running": current.id if current else None})
    return {"workers": out, "hosts": host_states}


def failures(index: StoreIndex) -> list[dict[str, Any]]:
    out = []
    for trial_id in reversed(index.failures[-FAILURES_SHOWN:]):
        trial: Trial | None = index.store.find_trial(trial_id)
        if trial is not None:
            out.append({"trial_id": trial.id, "worker": trial.worker, "attempt": trial.attempt,
                        "ended_at": trial.ended_at, "error": trial.error or trial.stop_reason or ""})
    return out


def _natural(name: str) -> list[Any]:
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
