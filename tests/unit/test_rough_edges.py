"""Rough edges a new user hit (issue 13, item 5), each pinned by a test that fails without its fix.

Real parts: the real ControllerCore over an in-memory or LMDB store (``run_inprocess``), real
matplotlib figures, real files for the experiment-file record.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

from pbt_actors.cli.run import finished_store_message, progress_text, trial_estimate
from pbt_actors.cli.summary import print_summary, store_summary
from pbt_actors.control.estimate import estimate_completed, initial_estimate, read_estimate
from pbt_actors.control.final_population import final_population, read_final_population
from pbt_actors.control.progress import best_completed
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.records import AttemptRecord, Origin, OriginKind, Trial, TrialStatus
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT_FILE
from pbt_actors.tools.experiment_source import experiment_file_record, recorded_experiment_file
from pbt_actors.tools.inprocess import run_inprocess
from pbt_actors.tools.report.index_page import steps_text
from pbt_actors.tools.report.report_data import ReportData
from pbt_actors.tools.report.timeline_figures import Interval, figure_utilisation, utilisation_label

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy_quadratic.py"

pytestmark = pytest.mark.timeout(60)


def _toy(**changes: object):  # type: ignore[no-untyped-def]
    experiment, train = load_experiment_file(TOY)
    return replace(experiment, **changes), train


def _done(trial_id: int, q: float, *, initiator: int | None, start: int, end: int) -> Trial:
    kind = OriginKind.SEED if initiator is None else OriginKind.TOURNAMENT
    return Trial(
        trial_id,
        generation=0 if initiator is None else 1,
        hparams={"h0": 0.5, "h1": 0.5},
        start_step=start,
        end_step=end,
        origin=Origin(kind, initiator=initiator),
        parent_id=initiator,
        status=TrialStatus.COMPLETED,
        final={"Q": q},
    )


# --- "best" is the best at any step: show the final population too --------------------------------
def test_final_population_is_the_latest_completed_trial_of_each_slot_not_the_best_ever() -> None:
    experiment, _ = _toy(max_steps=10)
    trials = [_done(1, 0.9, initiator=None, start=0, end=5), _done(2, 0.5, initiator=None, start=0, end=5),
              _done(3, 0.8, initiator=1, start=5, end=10), _done(4, 0.6, initiator=2, start=5, end=10),
              _done(5, 0.99, initiator=3, start=10, end=15).evolve(status=TrialStatus.FAILED)]
    population = final_population(trials, experiment)
    assert [t.id for t in population.trials] == [3, 4]
    assert population.best is not None and population.best.id == 3
    assert population.mean == pytest.approx({"Q": 0.7})
    assert population.at_max_steps == 2
    assert population.to_dict()["best"]["trial_id"] == 3


def test_summary_shows_best_overall_final_population_and_seed(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    experiment, train = _toy(max_steps=40, seed=12345)
    store = InMemoryTrialStore()
    run_inprocess(experiment, train, tmp_path, store=store, workers=2)
    summary = store_summary(store, experiment)
    population = summary["final_population"]
    assert population["size"] == experiment.population
    assert population["at_max_steps"] == experiment.population
    ends = {t.id: t.end_step for t in store.iter_trials()}
    assert all(ends[i] == experiment.max_steps for i in population["trial_ids"])
    best = best_completed(store, experiment)
    assert best is not None
    assert population["best"]["final"]["Q"] <= best.final["Q"]  # type: ignore[index]
    assert summary["seed"] == 12345
    print_summary(summary, "STORE")
    out = capsys.readouterr().out
    assert "seed         12345" in out and "differ" in out
    assert "best overall trial" in out
    assert f"final pop.   {experiment.population} trials ({experiment.population} at max_steps" in out


# --- an honest estimate ------------------------------------------------------------------------------
def test_estimate_is_remade_from_the_frontier_and_matches_the_end(tmp_path: Path) -> None:
    experiment, train = _toy(max_steps=40, population=3)
    assert initial_estimate(experiment) == trial_estimate(experiment) == 3 * 8
    assert initial_estimate(replace(experiment, max_trials=10)) == 10
    store = InMemoryTrialStore()
    run_inprocess(experiment, train, tmp_path, store=store, workers=2)
    completed = store.count(TrialStatus.COMPLETED)
    assert completed != 3 * 8  # exploiting a member behind it cost a slot extra trials: the guess was off
    assert read_estimate(store, experiment) == completed


def test_estimate_counts_a_slot_that_copied_a_member_behind_it() -> None:
    experiment, _ = _toy(max_steps=15, steps_per_trial=5, population=2)
    seeds = [_done(1, 0.9, initiator=None, start=0, end=5), _done(2, 0.5, initiator=None, start=0, end=5)]
    three = _done(3, 0.8, initiator=1, start=5, end=10)
    running = [_done(4, 0.0, initiator=3, start=5, end=10).evolve(status=TrialStatus.RUNNING, final=None),
               _done(5, 0.0, initiator=2, start=5, end=10).evolve(status=TrialStatus.RUNNING, final=None)]
    # slot A: 1, 3, 4 (copied trial 2 at step 5), one more; slot B: 2, 5, one more
    done = len([*seeds, three])
    assert estimate_completed(done, running, [], 0, experiment) == 7 > initial_estimate(experiment)
    waiting = [three.evolve(initiated=False)]
    assert estimate_completed(done, running[1:], waiting, 0, experiment) == 3 + 2 + 1
    assert estimate_completed(done, running, [], 2, replace(experiment, max_trials=6)) == 4


def test_progress_text_shows_lost_trials_apart() -> None:
    assert progress_text({"completed": 5, "failed": 2, "stopped": 1}) == "failed/stopped 3 (replaced)  "
    assert progress_text({"completed": 5}) == ""


# --- a finished store and different flags ---------------------------------------------------------------
def _args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": None, "policy": None, "budget_steps": None, **values})


def test_finished_store_warns_which_flags_differ_and_suggests_a_new_store() -> None:
    experiment, _ = _toy()
    previous = {"experiment": experiment.name, "policy": "initiator", "seed": 0, "budget": None}
    store_dir = Path("/runs/toy")
    text = finished_store_message(store_dir, previous, experiment, _args(seed=7, policy="truncation"))
    assert text.startswith("warning: --seed 7, --policy truncation differ")
    assert "seed 0" in text and "policy initiator" in text
    assert "--store /runs/toy-2" in text
    same = finished_store_message(store_dir, previous, experiment, _args(seed=0))
    assert "warning" not in same and "nothing to do" in same and "--store /runs/toy-2" in same


def test_run_help_explains_seed_and_max_trials() -> None:
    from pbt_actors.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["run"].format_help().split())
    assert "--max-trials" in text and "failed ones included" in text
    assert "Shown in the summary" in text and "does not repeat a run" in text


# --- the report: utilisation and steps --------------------------------------------------------------------
def test_utilisation_label_separates_the_first_trial_and_bars_have_no_white_stripes() -> None:
    experiment, _ = _toy()
    # worker w0: a 10 s first trial (mostly imports), then four 1 s trials back to back
    intervals = [Interval("w0", 0.0, 10.0, "completed")] + [
        Interval("w0", 10.0 + i, 11.0 + i, "completed") for i in range(4)]
    label = utilisation_label("w0", intervals, 14.0)
    assert "% busy" not in label
    assert label == "w0  (100% holding a trial; after its first: 100%)"
    trials = []
    for n, iv in enumerate(intervals, start=1):
        t = _done(n, 0.5, initiator=None if n == 1 else n - 1, start=0, end=5)
        trials.append(t.evolve(worker="w0", completed_attempt=1, created_at=0.0,
                               history=(AttemptRecord(1, "w0", iv.start, iv.end),)))
    data = ReportData(trials, experiment, 14.0, True)
    fig = figure_utilisation(data)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if len(c.get_paths())]
    busy = [c for c in bars if tuple(round(x, 3) for x in c.get_facecolor()[0][:3]) != (0.933, 0.933, 0.933)]
    assert sum(len(c.get_paths()) for c in busy) == 2  # the hatched first trial + one merged bar
    for collection in busy:
        assert all(w == 0.0 for w in collection.get_linewidths())
    assert "holding a trial" in ax.get_yticklabels()[0].get_text()


def test_report_steps_row_counts_trained_steps_not_max_steps() -> None:
    experiment, _ = _toy(max_steps=500, steps_per_trial=50)
    trials = [_done(i, 0.5, initiator=None, start=0, end=50) for i in range(1, 8)]
    text = steps_text(ReportData(trials, experiment, 0.0, True))
    assert "350 trained in all" in text
    assert "500 in all" not in text and "lineages end at step 500" in text


# --- the experiment file recorded in the store -------------------------------------------------------------
def test_recorded_experiment_file_found_changed_missing_and_malformed(tmp_path: Path) -> None:
    exp = tmp_path / "exp.py"
    exp.write_text("x = 1\n")
    store = InMemoryTrialStore()
    with pytest.raises(ConfigError, match="does not record"):
        recorded_experiment_file(store)
    store.put_meta(META_EXPERIMENT_FILE, experiment_file_record(exp))
    recorded = recorded_experiment_file(store)
    assert recorded.path == exp.resolve() and not recorded.changed and recorded.warning() is None
    exp.write_text("x = 2\n")
    recorded = recorded_experiment_file(store)
    assert recorded.changed and "changed since" in (recorded.warning() or "")
    exp.unlink()
    with pytest.raises(ConfigError, match="missing"):
        recorded_experiment_file(store)
    store.put_meta(META_EXPERIMENT_FILE, {"path": 3})
    with pytest.raises(ConfigError, match="malformed"):
        recorded_experiment_file(store)


@pytest.mark.parametrize("policy,max_trials", [("initiator", None), ("truncation", None), ("random", None),
                                               ("initiator", 13)])
def test_reading_the_final_population_by_generation_matches_the_full_scan(tmp_path: Path, policy: str,
                                                                           max_trials: int | None) -> None:
    experiment, train = _toy(max_steps=40, population=3, policy=policy, max_trials=max_trials)
    store = InMemoryTrialStore()
    run_inprocess(experiment, train, tmp_path, store=store, workers=2)
    full = final_population(list(store.iter_trials()), experiment)
    assert [t.id for t in read_final_population(store, experiment).trials] == [t.id for t in full.trials]
    assert len(full.trials) == 3


def test_read_final_population_of_an_empty_store_has_no_best() -> None:
    experiment, _ = _toy()
    population = read_final_population(InMemoryTrialStore(), experiment)
    assert population.best is None and population.trials == () and population.mean == {}


def test_report_index_shows_final_population_and_trained_steps(tmp_path: Path) -> None:
    from pbt_actors.tools.report import write_report

    experiment, train = _toy(max_steps=20, population=2)
    store = InMemoryTrialStore()
    run_inprocess(experiment, train, tmp_path / "ckpt", store=store, workers=2)
    page = write_report(store, tmp_path / "report")["index"].read_text()
    trained = sum(t.steps for t in store.iter_trials() if t.status is TrialStatus.COMPLETED)
    assert f"{trained:,} trained in all" in page
    population = read_final_population(store, experiment)
    assert population.best is not None
    assert f"final population</th><td>2 trials (2 at max_steps 20): best trial {population.best.id}" in page
    assert "best trial (any step)" in page
