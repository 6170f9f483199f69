"""``export --format mlflow``: a store as MLflow runs, through MLflow's own tracking client.

Layer 5 (a face): reads a ``TrialStore`` (read-only), never writes one.

Teams that track their training in MLflow want a search there too. The mapping:

* the search is one *parent* run (named after the experiment, tagged ``pbt.store_run_id`` with
  the store's run id), in the MLflow experiment ``--mlflow-experiment`` (default: the
  experiment's name);
* every terminal trial is a run nested under it (``mlflow.parentRunId``), named
  ``trial-<id>``: its hyperparameters as params, every measurement and its final result as
  metrics with their steps, tags ``pbt.trial_id``, ``pbt.parent_id``, ``pbt.crossover_id``,
  ``pbt.generation``, ``pbt.origin`` (and the initiator/opponent of a tournament),
  ``pbt.worker``, ``pbt.status``, ``pbt.attempts``, ``pbt.start_step``/``pbt.end_step`` and,
  for a failed trial, ``pbt.error``; its MLflow status is FINISHED, FAILED or KILLED (stopped);
* the best trial (``control.progress.best_completed``) carries ``pbt.best = true`` (moved when
  a better one completes) and the parent run the best's id and final metrics.

An export is resumable: the parent run is found again by the store's run id, and trials already
exported (a terminal child run) are skipped, so ``--follow`` can be stopped and started again
and a second export of the same store adds only what is new. A child left RUNNING by an export
that was killed mid-trial is deleted and written again.

Trials are written by a few threads at once (one MLflow request costs a round trip; the client
is thread-safe): ``workers``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pbt_actors.control.progress import best_completed, run_finished
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, META_RUN_ID, TrialStore
from pbt_actors.tools.lineage_paths import LineageAssigner

PARENT_TAG = "mlflow.parentRunId"
STORE_RUN_TAG = "pbt.store_run_id"
TRIAL_TAG = "pbt.trial_id"
BEST_TAG = "pbt.best"
ERROR_TAG_CHARS = 4000
"""A failed trial's traceback is cut to its last this many characters (MLflow keeps 8000)."""
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 900
"""MLflow takes 1000 entities a batch, of which at most 100 params: 900 metrics leave room for them."""
STATUS = {TrialStatus.COMPLETED: "FINISHED", TrialStatus.FAILED: "FAILED", TrialStatus.STOPPED: "KILLED"}


def load_mlflow() -> Any:
    """Import MLflow's client lazily, with a clear error when the extra is missing (``--follow``
    calls it before waiting for a store: the import takes seconds, a short run may be over)."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("export --format mlflow needs MLflow's client: pip install 'pbt-actors[mlflow]'") from exc
    return MlflowClient, Metric, Param, RunTag


def _key(name: str) -> str:
    """An MLflow key (alphanumerics, ``_ - . / space``); anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name) or "_"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def trial_tags(trial: Trial, lineage: int | None) -> dict[str, str]:
    """The ``pbt.*`` tags of one trial's run (pure; see the module doc)."""
    tags = {
        TRIAL_TAG: str(trial.id), "pbt.generation": str(trial.generation), "pbt.origin": trial.origin.kind.value,
        "pbt.status": trial.status.value, "pbt.attempts": str(trial.attempt), "pbt.start_step": str(trial.start_step),
        "pbt.end_step": str(trial.end_step),
    }
    optional = {"pbt.parent_id": trial.parent_id, "pbt.crossover_id": trial.crossover_id,
                "pbt.initiator_id": trial.origin.initiator, "pbt.opponent_id": trial.origin.opponent,
                "pbt.worker": trial.worker or (trial.lease.worker if trial.lease else None), "pbt.lineage": lineage}
    tags.update({k: str(v) for k, v in optional.items() if v is not None})
    if trial.status is TrialStatus.FAILED and trial.error:
        tags["pbt.error"] = trial.error[-ERROR_TAG_CHARS:]
    if trial.stop_reason:
        tags["pbt.stop_reason"] = trial.stop_reason[:ERROR_TAG_CHARS]
    return tags


def trial_metrics(trial: Trial) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp_ms, step)`` of every measurement and the final result (at
    ``end_step``; a measurement at that step is the final's own report and is not repeated)."""
    wall = _ms(trial.ended_at or trial.started_at or trial.created_at) or 0
    final_step = trial.end_step if trial.final is not None else None
    points = [(_key(k), float(v), wall, m.step) for m in trial.measurements if m.step != final_step
              for k, v in m.metrics.items()]
    if trial.final is not None:
        points += [(_key(k), float(v), wall, trial.end_step) for k, v in trial.final.items()]
    return points


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MlflowExport:
    """Writes the trials of one store to an MLflow tracking server, incrementally."""

    def __init__(self, store: TrialStore, tracking_uri: str | None = None, experiment_name: str | None = None,
                 *, workers: int = 8) -> None:
        # MLflow prints two "View run" lines per ended run, and reads the run back to do so (one
        # more round trip per trial): not wanted for hundreds of runs on our standard output
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        client_cls, self._metric, self._param, self._tag = load_mlflow()
        self.store = store
        self.client = client_cls(tracking_uri=tracking_uri)
        self.tracking_uri: str = self.client.tracking_uri
        self.experiment_name = experiment_name
        self.workers = workers
        self.experiment: Experiment | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._done: set[int] = set()  # trial ids already exported (this export or an earlier one)
        self._best: tuple[int, str] | None = None  # (trial id, run id) carrying the best tag
        self._runs: dict[int, str] = {}  # trial id -> its run id
        self._lineages = LineageAssigner()
        self._next_id = 1
        self._waiting: list[int] = []
        self.trials_written = 0
        self.trials_skipped = 0

    # --- the loop ---------------------------------------------------------------------------------
    def poll(self) -> int:
        """Write every trial that became terminal since the last call; returns how many."""
        if self.experiment is None:
            raw = self.store.get_meta(META_EXPERIMENT)
            if raw is None:  # a store being created: nothing to name the runs after yet
                return 0
            self.experiment = Experiment.from_dict(raw)
            self._open_parent()
        last = self.store.count()
        for trial_id in range(self._next_id, last + 1):
            trial = self.store.find_trial(trial_id)
            if trial is None:  # ids are dense: not committed yet
                break
            self._lineages.add(trial.id, trial.parent_id)
            self._next_id = trial_id + 1
            if trial_id not in self._done:
                self._waiting.append(trial_id)
        ready: list[Trial] = []
        still: list[int] = []
        for trial_id in self._waiting:
            trial = self.store.get_trial(trial_id)
            if trial.status.terminal:
                ready.append(trial)
            else:
                still.append(trial_id)
        self._waiting = still
        if ready:
            with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                for trial, run_id in zip(ready, pool.map(self._write_trial, ready), strict=True):
                    self._runs[trial.id] = run_id
                    self._done.add(trial.id)
            self.trials_written += len(ready)
            self._mark_best()
        return len(ready)

    @property
    def pending(self) -> int:
        """Trials seen but not terminal yet (``--follow`` waits for them)."""
        return len(self._waiting)

    @property
    def best_trial_id(self) -> int | None:
        """The trial that carries ``pbt.best`` (None before one completed)."""
        return None if self._best is None else self._best[0]

    def finish(self) -> None:
        """Mark the best trial and, when the search has finished, end the parent run."""
        if self.parent_run_id is None:
            return
        self._mark_best()
        if run_finished(self.store):
            self.client.set_terminated(self.parent_run_id, "FINISHED")

    def close(self) -> None:
        """Nothing stays open between polls; kept so the export is a context manager."""

    def __enter__(self) -> MlflowExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the parent run -----------------------------------------------------------------------------
    def _open_parent(self) -> None:
        assert self.experiment is not None
        name = self.experiment_name = self.experiment_name or self.experiment.name
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        store_run = str(self.store.get_meta(META_RUN_ID) or "")
        parent = None
        if store_run:
            existing = self.client.search_runs([self.experiment_id], f"tags.`{STORE_RUN_TAG}` = '{store_run}'",
                                               max_results=1)
            parent = existing[0] if existing else None
        if parent is None:
            tags = {STORE_RUN_TAG: store_run, "pbt.experiment": self.experiment.name,
                    "pbt.policy": self.experiment.policy}
            parent = self.client.create_run(self.experiment_id, tags=tags, run_name=self.experiment.name)
            params = {"policy": self.experiment.policy, "max_steps": self.experiment.max_steps,
                      "seed": self.experiment.seed}
            self.client.log_batch(parent.info.run_id, params=[self._param(k, str(v)) for k, v in params.items()
                                                              if v is not None])
        self.parent_run_id = parent.info.run_id
        self._resume()

    def _resume(self) -> None:
        """Find the trials an earlier export already wrote under this parent run."""
        assert self.experiment_id is not None and self.parent_run_id is not None
        for run in self._children():
            trial = run.data.tags.get(TRIAL_TAG)
            if trial is None or not trial.isdigit():
                continue
            if run.info.status == "RUNNING":  # an export killed mid-trial: written again
                self.client.delete_run(run.info.run_id)
                continue
            self._done.add(int(trial))
            self._runs[int(trial)] = run.info.run_id
            if run.data.tags.get(BEST_TAG) == "true":
                self._best = (int(trial), run.info.run_id)
            self.trials_skipped += 1

    def _children(self) -> Iterable[Any]:
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                           max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    # --- one trial --------------------------------------------------------------------------------
    def _write_trial(self, trial: Trial) -> str:
        assert self.experiment_id is not None and self.parent_run_id is not None
        tags = {PARENT_TAG: self.parent_run_id, **trial_tags(trial, self._lineages.lineage_of(trial.id))}
        run = self.client.create_run(self.experiment_id, start_time=_ms(trial.started_at or trial.created_at),
                                     tags=tags, run_name=f"trial-{trial.id}")
        run_id: str = run.info.run_id
        params = [self._param(_key(k), str(v)) for k, v in sorted(trial.hparams.items())]
        metrics = [self._metric(k, v if math.isfinite(v) else float("nan"), ts, step)
                   for k, v, ts, step in trial_metrics(trial)]
        metric_batches = list(_chunks(metrics, MAX_METRICS_PER_BATCH))
        param_batches = list(_chunks(params, MAX_PARAMS_TAGS_PER_BATCH))
        for i in range(max(len(metric_batches), len(param_batches))):  # at most 900 + 100 entities a batch
            self.client.log_batch(run_id, metrics=metric_batches[i] if i < len(metric_batches) else (),
                                  params=param_batches[i] if i < len(param_batches) else ())
        self.client.set_terminated(run_id, STATUS[trial.status], end_time=_ms(trial.ended_at))
        return run_id

    def _mark_best(self) -> None:
        """Tag the best trial's run (and untag the previous best); the parent run carries the
        best's id and final metrics."""
        assert self.experiment is not None and self.parent_run_id is not None
        best = best_completed(self.store, self.experiment)
        if best is None or best.id not in self._runs or (self._best is not None and self._best[0] == best.id):
            return
        if self._best is not None:
            self.client.delete_tag(self._best[1], BEST_TAG)
        run_id = self._runs[best.id]
        self.client.set_tag(run_id, BEST_TAG, "true")
        self._best = (best.id, run_id)
        self.client.set_tag(self.parent_run_id, "pbt.best_trial_id", str(best.id))
        self.client.set_tag(self.parent_run_id, "pbt.best_run_id", run_id)
        final = [self._metric(f"best.{_key(k)}", float(v), _ms(best.ended_at) or 0, best.end_step)
                 for k, v in (best.final or {}).items() if math.isfinite(float(v))]
        if final:
            self.client.log_batch(self.parent_run_id, metrics=final)
