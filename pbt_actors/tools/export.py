"""Flat tables of a store for pandas users: one row per trial and measurement.

Layer 5 (a face): reads a ``TrialStore``, never writes one.

Every trial gives one row per recorded measurement (``kind = "measurement"``, ``step`` = the
step it was reported at), then one row for its final metrics (``kind = "final"``, ``step`` =
its ``end_step``) once it has them; a trial with neither (pending, or failed before reporting)
gives a single ``kind = "trial"`` row with an empty step. Trial columns repeat on every row so
that a ``groupby("trial_id")`` or a filter on ``kind`` is all a notebook needs.

Columns: the fixed ``COLUMNS``, then ``hparam.<name>`` for every hyperparameter seen, then
``metric.<name>`` for every metric seen (both sorted). CSV leaves missing values empty (and writes
``nan``/``inf`` as Python spells them); JSON writes ``null`` for both missing and non-finite
values, so that the file stays strict JSON. JSON is a list of flat records: ``pandas.read_json(path, orient="records")``
or ``pandas.DataFrame(json.load(f))``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from typing import Any, Literal, TextIO

from pbt_actors.model.records import Trial
from pbt_actors.storage.trial_store import TrialStore

ExportFormat = Literal["csv", "json"]

COLUMNS: tuple[str, ...] = (
    "trial_id", "generation", "parent_id", "crossover_id", "origin", "status", "attempt",
    "start_step", "end_step", "worker", "created_at", "started_at", "ended_at", "kind", "step",
)


def trial_rows(trial: Trial) -> list[dict[str, Any]]:
    """The rows of one trial (see the module docstring)."""
    base: dict[str, Any] = {
        "trial_id": trial.id, "generation": trial.generation, "parent_id": trial.parent_id,
        "crossover_id": trial.crossover_id, "origin": trial.origin.kind.value, "status": trial.status.value,
        "attempt": trial.attempt, "start_step": trial.start_step, "end_step": trial.end_step,
        "worker": trial.worker if trial.worker is not None else (trial.lease.worker if trial.lease else None),
        "created_at": trial.created_at, "started_at": trial.started_at, "ended_at": trial.ended_at,
    }
    for key, value in trial.hparams.items():
        base[f"hparam.{key}"] = value
    rows = []
    for m in trial.measurements:
        rows.append({**base, "kind": "measurement", "step": m.step,
                     **{f"metric.{k}": v for k, v in m.metrics.items()}})
    if trial.final is not None:
        rows.append({**base, "kind": "final", "step": trial.end_step,
                     **{f"metric.{k}": v for k, v in trial.final.items()}})
    if not rows:
        rows.append({**base, "kind": "trial", "step": None})
    return rows


def export_rows(store: TrialStore) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` for every trial of ``store`` by ascending id."""
    rows: list[dict[str, Any]] = []
    hparams: set[str] = set()
    metrics: set[str] = set()
    for trial in store.iter_trials():
        for row in trial_rows(trial):
            rows.append(row)
            hparams.update(k for k in row if k.startswith("hparam."))
            metrics.update(k for k in row if k.startswith("metric."))
    columns = [*COLUMNS, *sorted(hparams), *sorted(metrics)]
    return columns, [{c: row.get(c) for c in columns} for row in rows]


def write_rows(columns: list[str], rows: Iterable[dict[str, Any]], out: TextIO, fmt: ExportFormat) -> int:
    """Write the table as ``csv`` or ``json``; returns the number of rows."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
            count += 1
        return count
    if fmt == "json":
        materialised = [{k: _finite_or_none(v) for k, v in row.items()} for row in rows]
        json.dump(materialised, out, allow_nan=False)
        out.write("\n")
        return len(materialised)
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")


def _finite_or_none(value: Any) -> Any:
    """Strict JSON has no NaN/inf: a diverged metric is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_store(store: TrialStore, out: TextIO, fmt: ExportFormat = "csv") -> int:
    """Write every trial of ``store`` to ``out``; returns the number of rows."""
    columns, rows = export_rows(store)
    return write_rows(columns, rows, out, fmt)
