"""One trial-execution path: what the end of ``train(ctx)`` means, the same for the worker and
the in-process runner (``pbt_actors.runtime.worker.trial_runner``)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import pbt_actors.runtime.worker.worker_client as worker_module
from pbt_actors.model.protocol import Fail, Report, TrialAssignment
from pbt_actors.model.records import CheckpointRef
from pbt_actors.runtime.worker import trial_runner
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import build_context, execute
from pbt_actors.tools.inprocess import run_assignment

pytestmark = pytest.mark.timeout(20)


def assignment(parent: CheckpointRef | None = None, start: int = 10, end: int = 20) -> TrialAssignment:
    return TrialAssignment(trial_id=7, attempt=2, generation=1, hparams={"lr": 0.1}, start_step=start,
                           end_step=end, parent_id=3 if parent else None, parent_checkpoint=parent,
                           heartbeat_s=1.0, experiment="exp")


def run(train: Any, tmp_path: Path, *, spec: TrialAssignment | None = None, ask_next: bool = False,
        preempt: threading.Event | None = None, link: Any = None) -> Report | Fail | None:
    ctx = build_context(spec or assignment(), str(tmp_path), "cpu", link=link, preempt_event=preempt)
    return execute(ctx, train, "w1", ask_next=ask_next)


def test_the_context_is_built_from_the_assignment(tmp_path: Path) -> None:
    parent = CheckpointRef("exp/trial-000003/a1-s10.ckpt", 5, "0" * 64, 10)
    ctx = build_context(assignment(parent), str(tmp_path), "cuda:0")
    assert (ctx.trial_id, ctx.attempt, ctx.generation, dict(ctx.hparams)) == (7, 2, 1, {"lr": 0.1})
    assert (ctx.start_step, ctx.end_step, ctx.parent_checkpoint, ctx.device) == (10, 20, parent, "cuda:0")
    assert (ctx.checkpoint_root, ctx.experiment, ctx.should_stop) == (str(tmp_path), "exp", False)


def test_a_finished_trial_is_a_report(tmp_path: Path) -> None:
    def train(ctx: TrialContext) -> Mapping[str, float]:
        ctx.report(15, loss=2.0)
        ctx.save_checkpoint({"w": 1})
        return {"loss": 1.0}

    report = run(train, tmp_path, ask_next=True)
    assert isinstance(report, Report)
    assert (report.worker, report.trial_id, report.attempt, dict(report.final)) == ("w1", 7, 2, {"loss": 1.0})
    assert [m.step for m in report.measurements] == [15]
    assert report.checkpoint is not None and report.checkpoint.step == 20
    assert report.next is True
    assert run(train, tmp_path).next is False  # type: ignore[union-attr]


def test_without_a_returned_dict_the_last_reported_metrics_are_final(tmp_path: Path) -> None:
    report = run(lambda ctx: ctx.report(19, acc=0.5), tmp_path)
    assert isinstance(report, Report) and dict(report.final) == {"acc": 0.5}


def test_a_raising_train_is_a_retryable_failure_with_its_traceback(tmp_path: Path) -> None:
    def train(ctx: TrialContext) -> None:
        raise ValueError("bad batch")

    fail = run(train, tmp_path)
    assert isinstance(fail, Fail) and fail.retryable and not fail.preempted
    assert "ValueError: bad batch" in fail.error and "Traceback" in fail.error


def test_an_unreadable_parent_checkpoint_fails_for_good(tmp_path: Path) -> None:
    missing = CheckpointRef("exp/trial-000003/a1-s10.ckpt", 5, "0" * 64, 10)
    fail = run(lambda ctx: ctx.load_checkpoint(), tmp_path, spec=assignment(missing))
    assert isinstance(fail, Fail) and not fail.retryable
    assert "CheckpointError: checkpoint exp/trial-000003/a1-s10.ckpt is missing" in fail.error


def save(ctx: TrialContext) -> None:
    ctx.save_checkpoint({"w": 1})


def test_a_checkpoint_that_cannot_be_written_is_a_retryable_failure(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the checkpoint root should be")
    fail = run(save, not_a_folder)
    assert isinstance(fail, Fail) and fail.retryable
    assert "CheckpointWriteError: cannot write checkpoint" in fail.error
    assert fail.fault == "checkpoint_store"  # the store's fault, not the trial's (issue 20, item 4)


def test_a_write_failure_the_trial_catches_is_still_the_stores_fault(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the checkpoint root should be")

    def swallowing(ctx: TrialContext) -> None:
        try:
            ctx.save_checkpoint({"w": 1})
        except Exception as exc:
            raise RuntimeError("could not save") from exc

    fail = run(swallowing, not_a_folder)
    assert isinstance(fail, Fail) and fail.fault == "checkpoint_store", fail


def test_a_missing_parent_is_the_trials_fault_while_the_root_can_be_written(tmp_path: Path) -> None:
    missing = CheckpointRef("exp/trial-000003/a1-s10.ckpt", 10, "0" * 64, 10)
    fail = run(lambda ctx: ctx.load_checkpoint(), tmp_path, spec=assignment(missing))
    assert isinstance(fail, Fail) and not fail.retryable and fail.fault == ""
    assert not (tmp_path / ".pbt-probe").exists() or not list((tmp_path / ".pbt-probe").iterdir())  # probe cleaned


def test_inprocess_treats_a_checkpoint_write_failure_as_retryable_like_the_worker(tmp_path: Path) -> None:
    # regression: run_assignment used to fail such a trial for good, a worker retried it
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the checkpoint root should be")
    fail = run_assignment("inproc-0", assignment(), save, str(not_a_folder))
    assert isinstance(fail, Fail)
    assert "CheckpointWriteError: cannot write checkpoint" in fail.error
    assert fail.retryable and fail.fault == "checkpoint_store"


def test_inprocess_and_worker_run_trials_through_the_same_runner() -> None:
    assert worker_module.execute is trial_runner.execute
    assert worker_module.build_context is trial_runner.build_context


def test_a_preempted_trial_hands_back_its_resume_checkpoint(tmp_path: Path) -> None:
    preempt = threading.Event()

    def train(ctx: TrialContext) -> None:
        ctx.save_checkpoint({"w": 1}, step=14)
        preempt.set()  # SIGTERM arrives
        assert not ctx.report(14, loss=1.0)

    fail = run(train, tmp_path, preempt=preempt, ask_next=True)
    assert isinstance(fail, Fail) and fail.preempted and fail.retryable
    assert fail.resume is not None and fail.resume.step == 14


def test_a_preempted_trial_without_progress_has_nothing_to_resume_from(tmp_path: Path) -> None:
    preempt = threading.Event()

    def train(ctx: TrialContext) -> None:
        ctx.save_checkpoint({"w": 0}, step=ctx.start_step)  # nothing beyond the parent
        preempt.set()

    fail = run(train, tmp_path, preempt=preempt)
    assert isinstance(fail, Fail) and fail.preempted and fail.resume is None


def test_a_trial_that_finished_despite_the_preemption_reports_without_asking_for_more(tmp_path: Path) -> None:
    preempt = threading.Event()

    def train(ctx: TrialContext) -> Mapping[str, float]:
        preempt.set()
        ctx.save_checkpoint({"w": 1})  # at end_step
        return {"loss": 0.5}

    report = run(train, tmp_path, preempt=preempt, ask_next=True)
    assert isinstance(report, Report) and report.next is False and report.checkpoint is not None


class StopLink:
    def record(self, step: int, metrics: Mapping[str, float]) -> bool:
        return False  # the controller says stop


def test_a_trial_the_controller_stopped_has_nothing_to_report(tmp_path: Path) -> None:
    def train(ctx: TrialContext) -> None:
        while ctx.report(ctx.start_step, loss=1.0):
            pass

    assert run(train, tmp_path, link=StopLink()) is None


def test_a_keyboard_interrupt_is_not_a_trial_failure(tmp_path: Path) -> None:
    def train(ctx: TrialContext) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(train, tmp_path)
