"""Issue 4, item 7 (and 11): corrupt or missing checkpoints. A truncated file, a wrong sha256 or
a deleted parent checkpoint is detected before anything is loaded from it; the child fails
with a clear error (without retrying on that parent) and the policy gives the slot another
parent; the controller never crashes. ``pbt-actors verify`` then names the damaged file and
exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.model.records import OriginKind, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.faults.harness import EXPERIMENTS, env_with, start, verify_cli

CORRUPT = EXPERIMENTS / "corrupt.py"
DETECTED = {
    "truncate": r"bytes, expected",  # "checkpoint X is N bytes, expected M (truncated?)"
    "sha": "sha256 is",
    "delete": "is missing",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", sorted(DETECTED))
def test_a_damaged_parent_checkpoint_fails_its_children_and_another_parent_is_chosen(tmp_path: Path,
                                                                                    mode: str) -> None:
    store = tmp_path / "run"
    ckpt = store / "checkpoints"
    env = env_with(CORRUPT_MODE=mode, CORRUPT_TRIAL=1, FAULT_MAX_STEPS=20)
    # one worker: trial 1 completes first and, alone in its generation, wins its own tournament
    run = start("run", str(CORRUPT), "--workers", "1", "--devices", "cpu", "--store", str(store), "--json", env=env)
    assert run.wait(150) == 0, run.output()  # the controller never crashed: the run ran to its end

    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
        damaged = s.get_trial(1)
    assert damaged.status is TrialStatus.COMPLETED  # its report was fine; its file was damaged afterwards
    children = [t for t in everything if t.parent_id == 1]
    assert children, "trial 1 wins its tournaments, so it must have children"
    for child in children:
        assert child.status is TrialStatus.FAILED, child
        assert child.attempt == 1  # not retried: the same parent can never work
        error = child.error or ""
        assert "CheckpointError: checkpoint " in error and DETECTED[mode] in error, error
        assert "not valid msgpack" not in error  # caught by size/sha256, before decoding
        stand_ins = [t for t in everything if t.origin.kind is OriginKind.REPLACEMENT and t.origin.replaces == child.id]
        assert len(stand_ins) == 1, child.id
        assert stand_ins[0].parent_id not in (None, 1)  # the policy chose another parent
        assert stand_ins[0].status is TrialStatus.COMPLETED
    assert all(t.status is TrialStatus.COMPLETED for t in everything if t.parent_id != 1)

    # verify: every invariant holds except the damaged file, which it names; exit code 1
    report = verify_cli(store, ckpt)
    assert not report["ok"]
    assert len(report["problems"]) == 1 and report["problems"][0].startswith("trial 1: checkpoint "), report
    assert DETECTED[mode] in report["problems"][0]
