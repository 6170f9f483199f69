"""The toy example hands back a resume point when it is preempted, instead of claiming a
trial it did not finish (an under-trained trial recorded as complete was found by the SLURM
preemption tests)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType

import pytest

from pbt_actors.model.records import CheckpointRef
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import execute

pytestmark = pytest.mark.timeout(60)

TOY = Path(__file__).resolve().parents[2] / "examples" / "toy_quadratic.py"


def load_toy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("toy_quadratic_under_test", TOY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PreemptAfter:
    """A trial link that sets the preemption event after ``n`` reports (SIGTERM mid-trial)."""

    def __init__(self, n: int, event: threading.Event) -> None:
        self.n, self.event, self.seen = n, event, 0

    def record(self, step: int, metrics: object) -> bool:
        self.seen += 1
        if self.seen >= self.n:
            self.event.set()
        return True


def context(tmp_path: Path, preempt_after: int | None) -> TrialContext:
    event = threading.Event()
    link = PreemptAfter(preempt_after, event) if preempt_after else None
    ctx = TrialContext(trial_id=3, attempt=1, generation=0, hparams={"h0": 0.5, "h1": 0.5}, start_step=10,
                       end_step=15, checkpoint_root=str(tmp_path), experiment="toy", preempt_event=event)
    if link is not None:
        ctx.link = link
    return ctx


def test_a_preempted_toy_trial_fails_as_preempted_with_the_step_it_reached(tmp_path: Path) -> None:
    toy = load_toy()
    ctx = context(tmp_path, preempt_after=2)
    outcome = execute(ctx, toy.train, "w0")
    assert outcome is not None and getattr(outcome, "preempted", False), outcome
    resume = outcome.resume
    assert isinstance(resume, CheckpointRef) and resume.step == 12  # two steps of 10..15 were trained


def test_an_uninterrupted_toy_trial_completes_at_its_end_step(tmp_path: Path) -> None:
    toy = load_toy()
    outcome = execute(context(tmp_path, preempt_after=None), toy.train, "w0")
    assert outcome is not None and not getattr(outcome, "preempted", False), outcome
    assert outcome.checkpoint is not None and outcome.checkpoint.step == 15
