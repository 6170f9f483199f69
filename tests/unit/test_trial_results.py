"""Issue "hardening", items 12-14: what ``train`` returns, what ``ctx.report`` gets, and
``sys.exit`` inside ``train`` are validated inside the trial runner, so that a bad value is a
failed attempt with a clear message, never an exception that kills the worker process, and
never a trial COMPLETED with empty metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pbt_actors.model.protocol import Fail, Report, TrialAssignment
from pbt_actors.runtime.worker.trial_context import MetricError, TrialContext, metric_value
from pbt_actors.runtime.worker.trial_runner import BAD_RESULT, build_context, execute
from pbt_actors.tools.inprocess import run_assignment

pytestmark = pytest.mark.timeout(20)

SPEC = TrialAssignment(trial_id=7, attempt=1, generation=0, hparams={}, start_step=0, end_step=5, parent_id=None,
                       parent_checkpoint=None, heartbeat_s=1.0, experiment="exp")


def run(train: Any, tmp_path: Path, objective: tuple[str, ...] = ("Q",)) -> Report | Fail | None:
    return execute(build_context(SPEC, str(tmp_path)), train, "w1", objective=objective)


@pytest.mark.parametrize("value", ["abc", None, 10**400, b"1", [1.0], {"x": 1}, object()])
def test_a_non_numeric_metric_is_refused_with_its_name(value: Any) -> None:
    with pytest.raises(MetricError, match="metric 'Q' must be a number"):
        metric_value("Q", value)


@pytest.mark.parametrize("value", [1, 2.5, float("nan"), float("inf"), True])
def test_numbers_nan_and_inf_are_metrics(value: Any) -> None:
    assert metric_value("Q", value) == float(value) or metric_value("Q", value) != metric_value("Q", value)


@pytest.mark.parametrize("value", ["abc", None, 10**400])
def test_a_non_numeric_final_metric_is_a_failed_attempt(tmp_path: Path, value: Any) -> None:
    fail = run(lambda ctx: {"Q": value}, tmp_path)
    assert isinstance(fail, Fail) and fail.retryable and not fail.preempted
    assert fail.error.startswith(f"{BAD_RESULT}: the dict train returned: metric 'Q' must be a number"), fail.error


@pytest.mark.parametrize("value", ["abc", None, 10**400])
def test_a_non_numeric_reported_metric_is_a_failed_attempt_raised_in_train(tmp_path: Path, value: Any) -> None:
    def train(ctx: TrialContext) -> dict[str, float]:
        ctx.report(1, Q=value)
        return {"Q": 1.0}

    fail = run(train, tmp_path)
    assert isinstance(fail, Fail) and fail.retryable
    assert "MetricError: ctx.report(step=1): metric 'Q' must be a number" in fail.error


def test_metric_names_must_be_strings(tmp_path: Path) -> None:
    fail = run(lambda ctx: {1: 0.5}, tmp_path)
    assert isinstance(fail, Fail) and "metric names must be non-empty strings" in fail.error


@pytest.mark.parametrize("returned", [None, [1, 2], {"loss": 0.3}, (), 0.5])
def test_no_objective_metric_returned_or_reported_is_a_failed_attempt(tmp_path: Path, returned: Any) -> None:
    fail = run(lambda ctx: returned, tmp_path)
    assert isinstance(fail, Fail) and fail.retryable
    assert "without the objective metric 'Q', and it was never reported with ctx.report" in fail.error
    assert f"train returned {returned!r}" in fail.error


@pytest.mark.parametrize("returned", [None, [1, 2], {"loss": 0.3}])
def test_an_objective_metric_reported_during_the_trial_completes_it(tmp_path: Path, returned: Any) -> None:
    def train(ctx: TrialContext) -> Any:
        ctx.report(3, Q=0.25, loss=1.0)
        ctx.report(4, loss=0.5)  # the last report lacks Q: its last reported value is final
        return returned

    report = run(train, tmp_path)
    assert isinstance(report, Report)
    assert report.final["Q"] == 0.25
    if isinstance(returned, dict):
        assert dict(report.final) == {"loss": 0.3, "Q": 0.25}  # returned values win


def test_without_a_known_objective_some_metric_is_still_needed(tmp_path: Path) -> None:
    fail = run(lambda ctx: None, tmp_path, objective=())
    assert isinstance(fail, Fail) and "no metric was reported with ctx.report" in fail.error
    report = run(lambda ctx: {"anything": 1}, tmp_path, objective=())
    assert isinstance(report, Report) and dict(report.final) == {"anything": 1.0}


@pytest.mark.parametrize("code", [0, 1, None, "bye"])
def test_sys_exit_in_train_is_a_failed_attempt_not_the_end_of_the_worker(tmp_path: Path, code: Any) -> None:
    fail = run(lambda ctx: sys.exit(code), tmp_path)
    assert isinstance(fail, Fail) and fail.retryable and not fail.preempted
    assert fail.error.startswith(f"train called sys.exit({code!r}) (SystemExit)")


def test_the_inprocess_runner_checks_the_objective_too(tmp_path: Path) -> None:
    fail = run_assignment("inproc-0", SPEC, lambda ctx: None, str(tmp_path), objective=("Q",))
    assert isinstance(fail, Fail) and "objective metric 'Q'" in fail.error


def test_the_controller_does_not_complete_a_trial_from_a_report_without_its_objective() -> None:
    # the backstop for workers that do not check (older builds, other clients)
    from pbt_actors.control.core import ControllerCore
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.protocol import Ack, RequestTrial
    from pbt_actors.model.records import TrialStatus
    from pbt_actors.model.space import Float
    from pbt_actors.storage.memory import InMemoryTrialStore

    core = ControllerCore(InMemoryTrialStore(), Experiment(name="e", space={"x": Float(0, 1)}, objective="Q",
                                                           population=1, steps_per_trial=5, max_steps=5,
                                                           max_attempts=2))
    for attempt in (1, 2):
        spec = core.handle(RequestTrial("w"), float(attempt))
        assert isinstance(spec, TrialAssignment) and spec.attempt == attempt
        assert core.handle(Report("w", spec.trial_id, attempt, {}, (), None), float(attempt)) == Ack()
    trial = core.store.get_trial(1)
    assert trial.status is TrialStatus.FAILED and trial.losses == 0
    assert "attempt 2 reported no value for the objective metric 'Q' (final {})" in (trial.error or "")
