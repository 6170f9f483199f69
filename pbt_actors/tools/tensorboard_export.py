"""``export --format tensorboard``: a store as TensorBoard event files, one run per lineage.

Layer 5 (a face): reads a ``TrialStore`` (read-only), never writes one.

Users of other tuners look at a search in TensorBoard. A PBT search is a tree of short trials,
so it is cut into lineages (``pbt_actors.tools.lineage_paths``: a trial continues its parent's
line if it is the parent's first child, later children branch off), and each lineage becomes a
run ``lineage-<first trial id>`` holding:

* ``metrics/<name>``: every metric of every measurement and final result against its step;
* ``hparams/<name>``: each hyperparameter as a step function (its value at the first and the
  last step a trial trained, ``start_step`` and ``end_step - 1``), so a schedule is a staircase;
* ``pbt/trial_id`` and ``pbt/generation`` at each trial's end step, to find a point's trial;
* the HParams plugin's records: the experiment (hyperparameters and the objective's metrics)
  and one session per lineage with the hyperparameters it started with (the trial that opened
  it: the result of an exploit/explore decision); the plugin reads the session's metric values
  from its ``metrics/<name>`` scalars (the last one).

Trials are written once they are terminal (completed, stopped or failed), in creation order;
``TensorBoardExport.poll`` can be called again and again (``--follow``) and writes only what is
new. The writer is tensorboard's own ``EventFileWriter`` and its protobufs: no TensorFlow and
no torch needed, only the ``tensorboard`` package (the ``tensorboard`` extra).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fields import is_number
from pbt_actors.model.records import Trial
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore
from pbt_actors.tools.lineage_paths import LineageAssigner

RUN_PREFIX = "lineage-"


def _tensorboard() -> Any:
    """Import tensorboard's writer lazily, with a clear error when the extra is missing."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("export --format tensorboard needs the tensorboard package: "
                          "pip install 'pbt-actors[tensorboard]'") from exc
    return event_pb2, summary_pb2, api_pb2, metadata, plugin_data_pb2, EventFileWriter


def run_name(lineage: int) -> str:
    """The TensorBoard run (sub-folder) of a lineage; zero-padded so runs sort by id."""
    return f"{RUN_PREFIX}{lineage:06d}"


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class TensorBoardExport:
    """Writes the trials of one store under ``out_dir``, incrementally (see the module doc)."""

    def __init__(self, store: TrialStore, out_dir: str | Path) -> None:
        self._pb = _tensorboard()
        self.store = store
        self.out = Path(out_dir)
        if self.out.exists() and any(self.out.rglob("events.out.tfevents.*")):
            raise ConfigError(f"{self.out} already holds TensorBoard event files; export into a new folder")
        self.out.mkdir(parents=True, exist_ok=True)
        raw = store.get_meta(META_EXPERIMENT)
        self.experiment = Experiment.from_dict(raw) if raw is not None else None
        self._lineages = LineageAssigner()
        self._writers: dict[int, Any] = {}
        self._next_id = 1
        self._waiting: list[int] = []  # created but not terminal yet, ascending
        self.trials_written = 0

    # --- the loop ---------------------------------------------------------------------------------
    def poll(self) -> int:
        """Write every trial that became terminal since the last call; returns how many."""
        if self.experiment is None:
            raw = self.store.get_meta(META_EXPERIMENT)
            self.experiment = Experiment.from_dict(raw) if raw is not None else None
        last = self.store.count()
        for trial_id in range(self._next_id, last + 1):
            trial = self.store.find_trial(trial_id)
            if trial is None:  # ids are dense; a gap means the writer has not committed it yet
                break
            self._lineages.add(trial.id, trial.parent_id)
            self._waiting.append(trial.id)
            self._next_id = trial_id + 1
        written = 0
        still: list[int] = []
        for trial_id in self._waiting:
            trial = self.store.get_trial(trial_id)
            if trial.status.terminal:
                self._write_trial(trial)
                written += 1
            else:
                still.append(trial_id)
        self._waiting = still
        for writer in self._writers.values():
            writer.flush()
        self.trials_written += written
        return written

    @property
    def lineages(self) -> list[str]:
        """The runs written so far."""
        return [run_name(lineage) for lineage in sorted(self._writers)]

    @property
    def pending(self) -> int:
        """Trials seen but not terminal yet (``--follow`` waits for them)."""
        return len(self._waiting)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> TensorBoardExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one trial --------------------------------------------------------------------------------
    def _write_trial(self, trial: Trial) -> None:
        lineage = self._lineages.lineage_of(trial.id)
        assert lineage is not None  # assigned when first seen
        writer = self._writers.get(lineage)
        if writer is None:
            writer = self._open_run(lineage, trial)
        wall = trial.ended_at or trial.started_at or trial.created_at
        final_step = trial.end_step if trial.final is not None else None
        for m in trial.measurements:
            if m.step != final_step:
                self._scalars(writer, m.step, wall, {f"metrics/{k}": v for k, v in m.metrics.items()})
        if trial.final is not None:
            self._scalars(writer, trial.end_step, wall, {f"metrics/{k}": v for k, v in trial.final.items()})
        numeric = {f"hparams/{k}": float(v) for k, v in trial.hparams.items()
                   if is_number(v)}
        # a trial trains steps [start, end): its values hold from start to end - 1, so a schedule
        # draws as a staircase and no step has two values
        self._scalars(writer, trial.start_step, wall, numeric)
        if trial.end_step - 1 > trial.start_step:
            self._scalars(writer, trial.end_step - 1, wall, numeric)
        self._scalars(writer, trial.end_step, wall, {"pbt/trial_id": float(trial.id),
                                                     "pbt/generation": float(trial.generation)})

    def _open_run(self, lineage: int, first: Trial) -> Any:
        *_, writer_cls = self._pb
        writer = writer_cls(str(self.out / run_name(lineage)))
        self._writers[lineage] = writer
        self._hparams_records(writer, first)
        return writer

    def _scalars(self, writer: Any, step: int, wall: float, values: Mapping[str, float]) -> None:
        event_pb2, summary_pb2, *_ = self._pb
        items = [summary_pb2.Summary.Value(tag=_tag(tag), simple_value=float(v)) for tag, v in values.items()]
        if items:
            writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=items)))

    def _hparams_records(self, writer: Any, first: Trial) -> None:
        """The HParams plugin's experiment and session-start records for one run."""
        event_pb2, summary_pb2, api_pb2, metadata, plugin_data_pb2, _ = self._pb
        infos = []
        start = plugin_data_pb2.SessionStartInfo(group_name=run_name(self._lineages.lineage_of(first.id) or 0))
        for name, value in sorted(first.hparams.items()):
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
                kind = "DATA_TYPE_BOOL"
            elif isinstance(value, int | float):
                start.hparams[name].number_value = float(value) if math.isfinite(value) else 0.0
                kind = "DATA_TYPE_FLOAT64"
            else:
                start.hparams[name].string_value = str(value)
                kind = "DATA_TYPE_STRING"
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(kind)))
        names = self.experiment.objective_.names if self.experiment is not None else tuple(sorted(first.final or {}))
        metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=_tag(f"metrics/{n}"))) for n in names]
        experiment = api_pb2.Experiment(
            name=self.experiment.name if self.experiment is not None else "", hparam_infos=infos,
            metric_infos=metric_infos)
        for tag, content in (
            (metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
                experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)),
            (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
                session_start_info=start, version=metadata.PLUGIN_DATA_VERSION)),
        ):
            meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
            value = summary_pb2.Summary.Value(tag=tag, metadata=meta)
            writer.add_event(event_pb2.Event(wall_time=first.created_at, step=first.start_step,
                                             summary=summary_pb2.Summary(value=[value])))
