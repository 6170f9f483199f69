"""``pbt-actors export --format tensorboard``: TensorBoard's own reader finds every lineage.

A real ``pbt-actors run`` of the toy example fills a store; the export (after the run, and
``--follow`` during a paced run) must give one run per lineage such that, read back with
``EventAccumulator``: every trial's final metric sits at its end step in exactly one run, each
run's trials form a warm-start chain, hyperparameters are scalars and HParams sessions, and
the number of runs is the number of leaves of the warm-start tree.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.support.runs import REPO, cli
from tests.support.waiting import wait_until

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package is not installed (extra 'tensorboard')")
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

TOY = REPO / "examples" / "toy_quadratic.py"
PACED_TOY = REPO / "tests" / "browser" / "experiments" / "paced_toy.py"


def _load_runs(out: Path) -> dict[str, object]:
    runs = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                            event_accumulator.TENSORS: 0})
        acc.Reload()
        runs[folder.name] = acc
    return runs


def _check_export(store_dir: Path, out: Path) -> int:
    with LmdbTrialStore(store_dir, readonly=True) as store:
        trials: dict[int, Trial] = {t.id: t for t in store.iter_trials()}
    assert trials and all(t.status is TrialStatus.COMPLETED for t in trials.values())
    parents = {t.parent_id for t in trials.values() if t.parent_id is not None}
    leaves = [t for t in trials.values() if t.id not in parents]
    runs = _load_runs(out)
    assert len(runs) == len(leaves)

    placed: dict[int, str] = {}
    for name, acc in runs.items():
        tags = acc.Tags()["scalars"]
        assert {"metrics/Q", "hparams/h0", "hparams/h1", "pbt/trial_id"} <= set(tags), (name, tags)
        chain = [int(e.value) for e in acc.Scalars("pbt/trial_id")]
        for earlier, later in itertools.pairwise(chain):
            assert trials[later].parent_id == earlier, (name, chain)  # a lineage is a warm-start path
        q = {e.step: e.value for e in acc.Scalars("metrics/Q")}
        h0 = {e.step: e.value for e in acc.Scalars("hparams/h0")}
        for trial_id in chain:
            trial = trials[trial_id]
            assert trial_id not in placed, f"trial {trial_id} in {placed.get(trial_id)} and {name}"
            placed[trial_id] = name
            assert q[trial.end_step] == pytest.approx(trial.final["Q"], rel=1e-6)
            assert h0[trial.start_step] == pytest.approx(trial.hparams["h0"], rel=1e-6)
            assert h0[trial.end_step - 1] == pytest.approx(trial.hparams["h0"], rel=1e-6)
        # the HParams plugin: the experiment and this lineage's session (its first trial's hparams)
        meta = acc.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG)
        assert meta.plugin_data.plugin_name == hparams_metadata.PLUGIN_NAME
        start = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content).session_start_info
        first = trials[chain[0]]
        assert {k: v.number_value for k, v in start.hparams.items()} == pytest.approx(dict(first.hparams))
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            acc.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content).experiment
        assert {h.name for h in experiment.hparam_infos} == {"h0", "h1"}
        assert [m.name.tag for m in experiment.metric_infos] == ["metrics/Q"]
    assert set(placed) == set(trials)  # every trial of every lineage is there
    return len(runs)


@pytest.mark.timeout(120)
def test_export_writes_one_tensorboard_run_per_lineage(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    run = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--json")
    wait_until(lambda: run.poll() is not None or _finished(store_dir), 100, "the toy run to finish")
    out = tmp_path / "tb"
    export = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out))
    text, _ = export.communicate(timeout=60)
    assert export.returncode == 0, text
    assert _check_export(store_dir, out) > 1
    again = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out))
    text, _ = again.communicate(timeout=60)
    assert again.returncode == 2 and "already holds TensorBoard event files" in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_export_follow_appends_trials_as_a_live_run_completes_them(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    cli("run", str(PACED_TOY), "--workers", "2", "--devices", "cpu", "--store", str(store_dir), "--quiet",
        env={"PBT_TEST_STEP_S": "0.02"})
    wait_until((store_dir / "data.mdb").exists, 60, "the run's store")
    out = tmp_path / "tb"
    follow = cli("export", "--store", str(store_dir), "--format", "tensorboard", "--out", str(out), "--follow",
                 "--interval", "0.2")
    text, _ = follow.communicate(timeout=150)  # --follow returns once the run has finished
    assert follow.returncode == 0, text
    assert _finished(store_dir)
    assert "following" in text
    import re

    assert re.search(r"^\d+ trials in \d+ lineages$", text, re.MULTILINE), text  # it appended while following
    assert _check_export(store_dir, out) > 1


def _finished(store_dir: Path) -> bool:
    from pbt_actors.control.progress import run_finished

    if not (store_dir / "data.mdb").exists():
        return False
    with LmdbTrialStore(store_dir, readonly=True) as store:
        return run_finished(store)
