"""``export --format tensorboard``: a store as TensorBoard event files.

Layer 5 (a face): reads a ``TrialStore`` (read-only), never writes one.

Users of other tuners look at a search in TensorBoard. A PBT search is a tree of short trials;
what they ask of it is "how did the model I ended with get there" and "which hyperparameters
gave which result". So the export writes two kinds of runs:

``lineages/trial-<id>`` (``-best`` appended to the best trial's)
    One run per member of the *final* population (``control.final_population``) and one for
    the best trial at any step (``control.progress.best_completed``) if it is not a member: the
    trial's whole warm-start history, from its generation-0 ancestor to itself, so a curve reads
    from step 0 to the end in one line (ancestors shared by two final members appear in both
    runs: each run is a model's history, not a partition of the tree). Holds
    ``metrics/<name>`` (every measurement and final result against its step),
    ``hparams/<name>`` (each hyperparameter as a staircase: its value at the first and last step
    a trial trained, ``start_step`` and ``end_step - 1``) and ``pbt/trial_id``,
    ``pbt/generation`` at each trial's end step, to find a point's trial.
``trials/trial-<id>``
    One run per terminal trial with the same scalars for that trial alone, and the HParams
    plugin's session records: that trial's own hyperparameters (a PBT trial trains with the
    values exploit/explore gave it, which differ from its lineage's start), its status, and
    its own metrics (the plugin reads the last ``metrics/<name>`` scalar of the run, the trial's
    final result). The HParams table and parallel-coordinates view then show every trial's
    hyperparameters against its own result.

The HParams *experiment* record (hyperparameter names and types, the objective's metrics) is
written once, in the log directory itself (the run ``.``).

Trials are written once terminal, in creation order; ``poll`` can be called again and again
(``--follow``) and writes only what is new. Lineages depend on the end of the search, so
``write_lineages`` writes them once, when the run has finished (or at Ctrl-C, for the population
of that moment). Event files are written synchronously with tensorboard's own record writer and
protobufs (tensorboard's ``EventFileWriter`` starts a thread per run, too many for one run per
trial): no TensorFlow and no torch, only the ``tensorboard`` package (the ``tensorboard`` extra).
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pbt_actors.control.final_population import read_final_population
from pbt_actors.control.progress import best_completed
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fields import is_number
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore

LINEAGES = "lineages"
TRIALS = "trials"


def _tensorboard() -> Any:
    """Import tensorboard's protobufs lazily, with a clear error when the extra is missing."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("export --format tensorboard needs the tensorboard package: "
                          "pip install 'pbt-actors[tensorboard]'") from exc
    return event_pb2, summary_pb2, api_pb2, metadata, plugin_data_pb2, RecordWriter


def trial_run(trial_id: int) -> str:
    """The run (folder under the log directory) of one trial; zero-padded so runs sort by id."""
    return f"{TRIALS}/trial-{trial_id:06d}"


def lineage_run(trial_id: int, best: bool) -> str:
    """The run of the lineage that ends at ``trial_id`` (a final member or the best trial)."""
    return f"{LINEAGES}/trial-{trial_id:06d}{'-best' if best else ''}"


def ancestry(trial: Trial, get: Any) -> list[Trial]:
    """``trial``'s warm-start chain, oldest first: its parent's chain, then itself."""
    chain = [trial]
    while chain[-1].parent_id is not None:
        chain.append(get(chain[-1].parent_id))
    chain.reverse()
    return chain


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class _EventFile:
    """One run's event file, written synchronously (no thread): the file-version header, then
    events, flushed on ``flush``/``close``."""

    _counter = 0

    def __init__(self, folder: Path, pb: Any) -> None:
        event_pb2, *_, record_writer = pb
        folder.mkdir(parents=True, exist_ok=True)
        _EventFile._counter += 1
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{_EventFile._counter}"
        self._event_pb2 = event_pb2
        self._writer = record_writer(open(folder / name, "wb"))  # noqa: SIM115 - closed by close()
        self.add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoardExport:
    """Writes the trials of one store under ``out_dir``, incrementally (see the module doc)."""

    def __init__(self, store: TrialStore, out_dir: str | Path) -> None:
        self._pb = _tensorboard()
        self.store = store
        self.out = Path(out_dir)
        if self.out.exists() and any(self.out.rglob("events.out.tfevents.*")):
            raise ConfigError(f"{self.out} already holds TensorBoard event files; export into a new folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.experiment: Experiment | None = None
        self._experiment_written = False
        self._next_id = 1
        self._waiting: list[int] = []  # created but not terminal yet, ascending
        self.trials_written = 0
        self.lineages: list[str] = []

    # --- the loop ---------------------------------------------------------------------------------
    def poll(self) -> int:
        """Write every trial that became terminal since the last call; returns how many."""
        if self.experiment is None:
            raw = self.store.get_meta(META_EXPERIMENT)
            self.experiment = Experiment.from_dict(raw) if raw is not None else None
        last = self.store.count()
        for trial_id in range(self._next_id, last + 1):
            if self.store.find_trial(trial_id) is None:  # ids are dense: not committed yet
                break
            self._waiting.append(trial_id)
            self._next_id = trial_id + 1
        written = 0
        still: list[int] = []
        for trial_id in self._waiting:
            trial = self.store.get_trial(trial_id)
            if trial.status.terminal:
                self._write_trial_run(trial)
                written += 1
            else:
                still.append(trial_id)
        self._waiting = still
        self.trials_written += written
        return written

    @property
    def pending(self) -> int:
        """Trials seen but not terminal yet (``--follow`` waits for them)."""
        return len(self._waiting)

    def write_lineages(self) -> list[str]:
        """Write the final population's lineages and the best trial's (once; see the module doc);
        returns the runs written."""
        if self.lineages or self.experiment is None:
            return self.lineages
        best = best_completed(self.store, self.experiment)
        ends = list(read_final_population(self.store, self.experiment).trials)
        if best is not None and all(t.id != best.id for t in ends):
            ends.append(best)
        cache: dict[int, Trial] = {}

        def get(trial_id: int) -> Trial:
            if trial_id not in cache:
                cache[trial_id] = self.store.get_trial(trial_id)
            return cache[trial_id]

        for end in ends:
            is_best = best is not None and end.id == best.id
            name = lineage_run(end.id, is_best)
            events = _EventFile(self.out / name, self._pb)
            try:
                for trial in ancestry(end, get):
                    self._trial_scalars(events, trial)
            finally:
                events.close()
            self.lineages.append(name)
        return self.lineages

    def close(self) -> None:
        """Nothing stays open between polls; kept so the export is a context manager."""

    def __enter__(self) -> TensorBoardExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one trial --------------------------------------------------------------------------------
    def _write_trial_run(self, trial: Trial) -> None:
        if not self._experiment_written:
            self._write_experiment(trial)
        events = _EventFile(self.out / trial_run(trial.id), self._pb)
        try:
            self._session(events, trial)
            self._trial_scalars(events, trial)
        finally:
            events.close()

    def _trial_scalars(self, events: _EventFile, trial: Trial) -> None:
        wall = trial.ended_at or trial.started_at or trial.created_at
        final_step = trial.end_step if trial.final is not None else None
        for m in trial.measurements:
            if m.step != final_step:
                self._scalars(events, m.step, wall, {f"metrics/{k}": v for k, v in m.metrics.items()})
        if trial.final is not None:
            self._scalars(events, trial.end_step, wall, {f"metrics/{k}": v for k, v in trial.final.items()})
        numeric = {f"hparams/{k}": float(v) for k, v in trial.hparams.items() if is_number(v)}
        # a trial trains steps [start, end): its values hold from start to end - 1, so a schedule
        # draws as a staircase and no step has two values
        self._scalars(events, trial.start_step, wall, numeric)
        if trial.end_step - 1 > trial.start_step:
            self._scalars(events, trial.end_step - 1, wall, numeric)
        self._scalars(events, trial.end_step, wall, {"pbt/trial_id": float(trial.id),
                                                     "pbt/generation": float(trial.generation)})

    def _scalars(self, events: _EventFile, step: int, wall: float, values: Mapping[str, float]) -> None:
        event_pb2, summary_pb2, *_ = self._pb
        items = [summary_pb2.Summary.Value(tag=_tag(tag), simple_value=float(v)) for tag, v in values.items()]
        if items:
            events.add(event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=items)))

    # --- the HParams plugin -------------------------------------------------------------------------
    def _plugin_event(self, tag: str, content: Any, wall: float, step: int) -> Any:
        event_pb2, summary_pb2, _, metadata, _, _ = self._pb
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
        value = summary_pb2.Summary.Value(tag=tag, metadata=meta)
        return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=[value]))

    def _write_experiment(self, first: Trial) -> None:
        """The experiment record (names and types of the hyperparameters, the objective's
        metrics), once, in the log directory's own run."""
        _, _, api_pb2, metadata, plugin_data_pb2, _ = self._pb
        infos = [api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(_data_type(value)))
                 for name, value in sorted(first.hparams.items())]
        names = self.experiment.objective_.names if self.experiment is not None else tuple(sorted(first.final or {}))
        metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=_tag(f"metrics/{n}"))) for n in names]
        experiment = api_pb2.Experiment(name=self.experiment.name if self.experiment is not None else "",
                                        hparam_infos=infos, metric_infos=metric_infos)
        events = _EventFile(self.out, self._pb)
        try:
            events.add(self._plugin_event(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
                experiment=experiment, version=metadata.PLUGIN_DATA_VERSION), first.created_at, 0))
        finally:
            events.close()
        self._experiment_written = True

    def _session(self, events: _EventFile, trial: Trial) -> None:
        """The trial's session: its own hyperparameters at its start, its status at its end."""
        _, _, api_pb2, metadata, plugin_data_pb2, _ = self._pb
        start = plugin_data_pb2.SessionStartInfo(group_name=trial_run(trial.id),
                                                 start_time_secs=trial.started_at or trial.created_at)
        for name, value in sorted(trial.hparams.items()):
            kind = _data_type(value)
            if kind == "DATA_TYPE_BOOL":
                start.hparams[name].bool_value = bool(value)
            elif kind == "DATA_TYPE_FLOAT64":
                number = float(value)
                start.hparams[name].number_value = number if math.isfinite(number) else 0.0
            else:
                start.hparams[name].string_value = str(value)
        events.add(self._plugin_event(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_start_info=start, version=metadata.PLUGIN_DATA_VERSION),
            trial.started_at or trial.created_at, trial.start_step))
        status = {TrialStatus.COMPLETED: "STATUS_SUCCESS", TrialStatus.FAILED: "STATUS_FAILURE",
                  TrialStatus.STOPPED: "STATUS_ABORTED"}.get(trial.status, "STATUS_UNKNOWN")
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status),
                                             end_time_secs=trial.ended_at or trial.created_at)
        events.add(self._plugin_event(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_end_info=end, version=metadata.PLUGIN_DATA_VERSION),
            trial.ended_at or trial.created_at, trial.end_step))


def _data_type(value: Any) -> str:
    if isinstance(value, bool):
        return "DATA_TYPE_BOOL"
    if isinstance(value, int | float):
        return "DATA_TYPE_FLOAT64"
    return "DATA_TYPE_STRING"


def written_runs(out: Path) -> Iterable[Path]:
    """The run folders under ``out`` that hold event files (tests, the CLI's closing line)."""
    return sorted({p.parent for p in out.rglob("events.out.tfevents.*")})
