"""Issue 4, item 6: failing trials. An exception in ``train`` is reported with its traceback,
retried up to ``max_attempts``, then the trial is FAILED; evolution goes on without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.model.records import OriginKind, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.verify import verify_store
from tests.faults.harness import EXPERIMENTS, env_with, start

FLAKY = EXPERIMENTS / "flaky.py"


@pytest.mark.timeout(180)
def test_a_raising_trial_is_retried_then_failed_and_evolution_goes_on(tmp_path: Path) -> None:
    store = tmp_path / "run"
    env = env_with(FLAKY_ALWAYS=3, FLAKY_ONCE=2, FAULT_STEP_SLEEP_S=0.02, FAULT_MAX_STEPS=30, FAULT_MAX_ATTEMPTS=3)
    run = start("run", str(FLAKY), "--workers", "2", "--devices", "cpu", "--store", str(store), "--json", env=env)
    assert run.wait(150) == 0, run.output()
    assert "trial 3 FAILED after 3 attempt(s)" in run.output()  # the controller says so in its log

    with LmdbTrialStore(store, readonly=True) as s:
        report = verify_store(s, store / "checkpoints", finished=True)
        assert report.ok, report.problems
        everything = list(s.iter_trials())
        doomed, once = s.get_trial(3), s.get_trial(2)
    # always failing: three attempts, each on record, then FAILED with the last traceback
    assert doomed.status is TrialStatus.FAILED
    assert doomed.attempt == 3 and [h[0] for h in doomed.history] == [1, 2, 3]
    error = doomed.error or ""
    assert error.startswith("Traceback (most recent call last):"), error
    assert "in _diverge" in error and "flaky.py" in error
    assert error.rstrip().endswith("FloatingPointError: flaky: trial 3 attempt 3 diverged at step 2")
    # failing once: the retry completed it
    assert once.status is TrialStatus.COMPLETED and once.completed_attempt == 2
    assert "FloatingPointError: flaky: trial 2 attempt 1 diverged" in (once.error or "")
    # evolution went on: the failed seed was replaced by a fresh sample, which took part in
    # tournaments like any member; the population reached max_steps; nothing else failed
    replacements = [t for t in everything if t.origin.kind is OriginKind.REPLACEMENT and t.origin.replaces == 3]
    assert len(replacements) == 1
    stand_in = replacements[0]
    assert stand_in.status is TrialStatus.COMPLETED and stand_in.initiated and stand_in.generation == 0
    assert any(t.origin.initiator == stand_in.id for t in everything)
    assert [t.id for t in everything if t.status is not TrialStatus.COMPLETED] == [3]
    assert max(t.end_step for t in everything) == 30 and max(t.generation for t in everything) >= 5
