"""What the faces explain (issue 22): retried attempts apart from failed trials, ties for best,
members short of max_steps, the MLflow export's tags and metrics, a lineage's ancestry.

Real parts: the real ControllerCore over an in-memory store (``run_inprocess``) with a ``train``
that really raises, and the summary printer the CLI uses.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from pbt_actors.cli.summary import print_summary, store_summary, ties_text
from pbt_actors.control.final_population import read_final_population
from pbt_actors.control.progress import best_completed
from pbt_actors.control.run_notes import attempt_failures, read_attempt_failures, short_of_max_steps, tied_with
from pbt_actors.model.records import Measurement, Origin, OriginKind, Trial, TrialStatus
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.tools.inprocess import run_inprocess
from pbt_actors.tools.mlflow_export import trial_metrics, trial_tags
from pbt_actors.tools.tensorboard_export import ancestry

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy_quadratic.py"

pytestmark = pytest.mark.timeout(60)


def _trial(trial_id: int, *, status: TrialStatus = TrialStatus.COMPLETED, attempt: int = 1, losses: int = 0,
           error: str | None = None, parent: int | None = None, final: dict[str, float] | None = None) -> Trial:
    return Trial(trial_id, generation=0 if parent is None else 1, hparams={"lr": 0.1, "opt": "sgd"},
                 start_step=0 if parent is None else 5, end_step=5 if parent is None else 10,
                 origin=Origin(OriginKind.SEED if parent is None else OriginKind.TOURNAMENT, initiator=parent,
                               opponent=None if parent is None else parent + 1),
                 parent_id=parent, status=status, attempt=attempt, losses=losses, error=error,
                 final=final if final is not None else ({"Q": 1.0} if status is TrialStatus.COMPLETED else None),
                 measurements=(Measurement(2, {"Q": 0.5}), Measurement(5 if parent is None else 10, {"Q": 1.0})),
                 worker="host-w0", created_at=100.0, started_at=101.0, ended_at=102.5)


def test_retried_attempts_are_counted_apart_from_failed_trials() -> None:
    trials = [_trial(1), _trial(2, attempt=3, losses=1, error="Traceback ...\nValueError: boom"),
              _trial(3, status=TrialStatus.FAILED, attempt=2, error="Traceback ...\nKeyError: 'x'"),
              _trial(4, status=TrialStatus.PENDING, attempt=2, losses=1, error="worker host-w1 lost: preempted")]
    failures = attempt_failures(trials)
    assert failures.retried == 2 + 1 + 1 and failures.lost == 1 + 0 + 1 and failures.crashed == 2
    assert failures.failed_trials == 1
    assert [r.trial_id for r in failures.trials] == [2, 3, 4]
    assert failures.trials[0].error is not None and failures.trials[0].error.endswith("ValueError: boom")
    assert failures.to_dict()["trials"][0] == {"trial_id": 2, "status": "completed", "attempts": 3, "retried": 2,
                                               "lost": 1, "crashed": 1, "worker": "host-w0",
                                               "error": "Traceback ...\nValueError: boom"}


def test_a_run_whose_attempts_crashed_and_were_retried_says_so_next_to_failed_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment, toy_train = load_experiment_file(TOY)
    experiment = replace(experiment, max_steps=20)

    def train(ctx):  # type: ignore[no-untyped-def]
        if ctx.attempt == 1 and ctx.trial_id % 3 == 0:
            raise ValueError(f"flaky data loader in trial {ctx.trial_id}")
        return toy_train(ctx)

    core = run_inprocess(experiment, train, tmp_path / "ckpt")
    store = core.store
    crashed = [t for t in store.iter_trials() if t.id % 3 == 0]
    assert crashed and all(t.status is TrialStatus.COMPLETED and t.attempt == 2 for t in crashed)
    assert store.count(TrialStatus.FAILED) == 0
    failures = attempt_failures(store.iter_trials())
    assert failures.retried == len(crashed) and failures.crashed == len(crashed) and failures.lost == 0
    assert all("ValueError: flaky data loader" in (r.error or "") for r in failures.trials)
    # a big store is scanned only when its retried-steps counter says something was retried
    assert read_attempt_failures(store, scan_below=1) == failures
    summary = {**store_summary(store, experiment), "attempt_failures": failures.to_dict()}
    print_summary(summary, "STORE")
    out = capsys.readouterr().out
    assert f"retried      {len(crashed)} failed attempt(s) in {len(crashed)} trial(s)" in out, out
    assert "apart from the 0 failed trial(s)" in out
    assert f"trial {crashed[-1].id} (completed, attempt 2" in out and "ValueError: flaky data loader" in out
    assert "pbt-actors status --store STORE --failures" in out


def test_ties_for_best_and_members_short_of_max_steps_are_explained(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    experiment, toy_train = load_experiment_file(TOY)
    experiment = replace(experiment, max_steps=30, max_trials=9)

    def train(ctx):  # type: ignore[no-untyped-def]
        toy_train(ctx)
        return {"Q": 1.0}  # a saturated metric: every trial ties

    store = run_inprocess(experiment, train, tmp_path / "ckpt").store
    best = best_completed(store, experiment)
    completed = list(store.iter_trials())
    assert best is not None and best.id == 1  # the oldest among equals
    assert tied_with(experiment, best, completed) == len(completed) - 1
    assert read_attempt_failures(store, scan_below=1).retried == 0
    population = read_final_population(store, experiment)
    short = short_of_max_steps(store, experiment, population.trials)
    assert short == {"max_trials reached": len(population.trials)}  # 9 trials cannot reach step 30
    print_summary(store_summary(store, experiment), "STORE")
    out = capsys.readouterr().out
    assert f"(tied with {len(completed) - 1} other trials; the oldest is named best)" in out, out
    assert f"{len(population.trials)} short: {len(population.trials)} max_trials reached" in out, out
    assert ties_text(1, "members") == "  (tied with 1 other member; the oldest is named best)"


def test_mlflow_tags_and_metrics_of_a_trial() -> None:
    trial = _trial(7, parent=3, attempt=2, losses=1)
    tags = trial_tags(trial, lineage=1)
    assert tags == {"pbt.trial_id": "7", "pbt.generation": "1", "pbt.origin": "tournament", "pbt.status": "completed",
                    "pbt.attempts": "2", "pbt.start_step": "5", "pbt.end_step": "10", "pbt.parent_id": "3",
                    "pbt.initiator_id": "3", "pbt.opponent_id": "4", "pbt.worker": "host-w0", "pbt.lineage": "1"}
    # the measurement at end_step is the final's own report: not repeated
    assert trial_metrics(trial) == [("Q", 0.5, 102500, 2), ("Q", 1.0, 102500, 10)]
    failed = _trial(8, status=TrialStatus.FAILED, error="x" * 5000 + "\nKeyError: 'lr'")
    assert trial_tags(failed, None)["pbt.error"].endswith("KeyError: 'lr'")
    assert len(trial_tags(failed, None)["pbt.error"]) == 4000
    assert trial_metrics(failed) == [("Q", 0.5, 102500, 2), ("Q", 1.0, 102500, 5)]


def test_a_lineage_run_holds_the_whole_ancestry() -> None:
    trials = {1: _trial(1), 2: _trial(2, parent=1), 3: _trial(3, parent=2)}
    assert [t.id for t in ancestry(trials[3], trials.__getitem__)] == [1, 2, 3]
    assert [t.id for t in ancestry(trials[1], trials.__getitem__)] == [1]


def _readme_rows(command: str) -> str:
    rows = [line for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith(f"| `pbt-actors {command} ")]
    assert rows, f"the README's command table has no `{command}` row"
    return " ".join(rows)


# flags the README explains in prose beside the table, not in the row itself
DOCUMENTED_ELSEWHERE = {"run": {"--checkpoint-root", "--no-zygote"}, "status": {"--checkpoint-root", "--interval"},
                        "export": {"--interval", "--mlflow-experiment"}}


@pytest.mark.parametrize("command", ["run", "status", "export"])
def test_the_readme_command_table_names_every_flag_of_run_status_and_export(command: str) -> None:
    """A new user reads the table, not ``--help`` (issue 22 found `run --dashboard` missing)."""
    import argparse

    from pbt_actors.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for a in sub.choices[command]._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    row = _readme_rows(command)
    missing = sorted(f for f in flags - DOCUMENTED_ELSEWHERE[command]
                     if not re.search(re.escape(f) + r"(?![\w-])", row))
    assert not missing, f"README's `{command}` row omits {missing}"
    readme = (REPO / "README.md").read_text()
    assert all(f in readme for f in DOCUMENTED_ELSEWHERE[command] & flags - {"--interval"})
