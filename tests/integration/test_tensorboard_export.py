"""``pbt-actors export --format tensorboard``: read back with TensorBoard's own reader.

The export must give (read with ``EventAccumulator``): one run per trial under ``trials/`` whose
HParams session holds *that trial's* hyperparameters and status and whose scalars hold its
results; one run per member of the final population (plus the best trial if it is not one)
under ``lineages/``, each the whole warm-start history from generation 0 to that trial, the best
one's name ending in ``-best``; the HParams experiment record once, in the log directory itself.
A simulated store (``pbt-actors sim``, under a second) gives a 300-trial tree; ``--follow``
is checked on a real paced run, started before the run's store exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.control.final_population import read_final_population
from pbt_actors.control.progress import best_completed
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT
from tests.support.runs import REPO, cli
from tests.support.sim_stores import sim_store

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package is not installed (extra 'tensorboard')")
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2  # noqa: E402
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

PACED_TOY = REPO / "tests" / "browser" / "experiments" / "paced_toy.py"


def _load(folder: Path) -> Any:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                        event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def _plugin_data(acc: Any, tag: str) -> Any:
    meta = acc.SummaryMetadata(tag)
    assert meta.plugin_data.plugin_name == hparams_metadata.PLUGIN_NAME
    return plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)


def _ancestry(trials: dict[int, Trial], trial: Trial) -> list[int]:
    chain = [trial.id]
    while trials[chain[-1]].parent_id is not None:
        chain.append(trials[chain[-1]].parent_id)  # type: ignore[arg-type]
    return chain[::-1]


def check_export(store_dir: Path, out: Path) -> None:
    with LmdbTrialStore(store_dir, readonly=True) as store:
        trials: dict[int, Trial] = {t.id: t for t in store.iter_trials()}
        experiment = Experiment.from_dict(store.get_meta(META_EXPERIMENT))
        finals = [t.id for t in read_final_population(store, experiment).trials]
        best = best_completed(store, experiment)
    assert trials and best is not None and len(finals) > 1
    objective = experiment.objective_.names
    hparam_names = sorted(next(iter(trials.values())).hparams)

    # the experiment record, once, in the log directory's own run
    record = _plugin_data(_load(out), hparams_metadata.EXPERIMENT_TAG).experiment
    assert sorted(h.name for h in record.hparam_infos) == hparam_names
    assert [m.name.tag for m in record.metric_infos] == [f"metrics/{n}" for n in objective]

    # a run per trial, its own hyperparameters in its HParams session
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-{i:06d}" for i in sorted(trials)]
    for trial in trials.values():
        acc = _load(out / "trials" / f"trial-{trial.id:06d}")
        start = _plugin_data(acc, hparams_metadata.SESSION_START_INFO_TAG).session_start_info
        assert {k: v.number_value for k, v in start.hparams.items()} == pytest.approx(dict(trial.hparams))
        end = _plugin_data(acc, hparams_metadata.SESSION_END_INFO_TAG).session_end_info
        expected = "STATUS_SUCCESS" if trial.status is TrialStatus.COMPLETED else "STATUS_FAILURE"
        assert api_pb2.Status.Name(end.status) == expected
        if trial.final is not None:
            for name in objective:  # what the plugin shows as the session's metric: the last value
                assert acc.Scalars(f"metrics/{name}")[-1].value == pytest.approx(trial.final[name], rel=1e-6)
                assert acc.Scalars(f"metrics/{name}")[-1].step == trial.end_step
        assert [int(e.value) for e in acc.Scalars("pbt/trial_id")] == [trial.id]

    # a run per final lineage (and the best's), the whole history from generation 0
    expected_runs = {f"trial-{i:06d}{'-best' if i == best.id else ''}" for i in {*finals, best.id}}
    assert {p.name for p in (out / "lineages").iterdir()} == expected_runs
    for name in expected_runs:
        end_id = int(re.match(r"trial-(\d+)", name).group(1))  # type: ignore[union-attr]
        acc = _load(out / "lineages" / name)
        chain = [int(e.value) for e in acc.Scalars("pbt/trial_id")]
        assert chain == _ancestry(trials, trials[end_id]), name
        assert trials[chain[0]].generation == 0 and trials[chain[0]].start_step == 0
        series = {e.step: e.value for e in acc.Scalars(f"metrics/{objective[0]}")}
        hparam = {e.step: e.value for e in acc.Scalars(f"hparams/{hparam_names[0]}")}
        assert min(hparam) == 0 and max(series) == trials[end_id].end_step  # step 0 to the end, one line
        for trial_id in chain:
            trial = trials[trial_id]
            assert series[trial.end_step] == pytest.approx(trial.final[objective[0]], rel=1e-6)
            assert hparam[trial.start_step] == pytest.approx(trial.hparams[hparam_names[0]], rel=1e-6)
            assert hparam[trial.end_step - 1] == pytest.approx(trial.hparams[hparam_names[0]], rel=1e-6)


@pytest.mark.timeout(120)
def test_export_writes_a_run_per_trial_and_per_final_lineage_read_back_by_tensorboard(tmp_path: Path) -> None:
    store_dir = sim_store(tmp_path / "sim", 300)
    out = tmp_path / "tb"
    export = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out))
    text, _ = export.communicate(timeout=90)
    assert export.returncode == 0, text
    assert "300 trials" in text and "final lineages" in text
    check_export(store_dir, out)
    again = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out))
    text, _ = again.communicate(timeout=60)
    assert again.returncode == 2 and "already holds TensorBoard event files" in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_export_follow_waits_for_the_store_and_appends_trials_as_a_live_run_completes_them(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    out = tmp_path / "tb"
    follow = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out), "--follow",
                 "--interval", "0.2")
    assert follow.stdout is not None
    first = follow.stdout.readline()  # printed before the run is started: it waits, not exits
    assert "no pbt-actors store" in first and "waiting" in first, first
    assert follow.poll() is None
    cli("run", str(PACED_TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--quiet",
        env={"PBT_TEST_STEP_S": "0.02"})
    text, _ = follow.communicate(timeout=150)  # --follow returns once the run has finished
    assert follow.returncode == 0, text
    assert _finished(store_dir)
    assert "following" in text
    assert re.search(r"^\d+ trials$", text, re.MULTILINE), text  # it appended while following
    check_export(store_dir, out)


def _finished(store_dir: Path) -> bool:
    from pbt_actors.control.progress import run_finished

    if not (store_dir / "data.mdb").exists():
        return False
    with LmdbTrialStore(store_dir, readonly=True) as store:
        return run_finished(store)

