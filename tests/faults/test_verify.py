"""Issue 4, item 11: ``pbt-actors verify --store DIR [--json]`` checks the store's invariants
and exits non-zero when one breaks. Each broken store below is built by hand to break exactly
one promise; verify must name it (and pass the healthy original)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pbt_actors.model.records import Lease, Origin, OriginKind, Trial, TrialSpec, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import save_checkpoint
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_FINISHED_AT
from tests.faults.harness import verify_cli


def _complete(store: LmdbTrialStore, trial: Trial, root: Path, started: float, ended: float) -> Trial:
    running = trial.evolve(status=TrialStatus.RUNNING, lease=Lease("w0", started + 60), started_at=started,
                           worker="w0")
    assert store.transition(trial.id, TrialStatus.PENDING, trial.attempt, running)
    ref = save_checkpoint(root, f"x/trial-{trial.id}.ckpt", {"trial": trial.id}, trial.end_step)
    done = running.evolve(status=TrialStatus.COMPLETED, lease=None, final={"Q": 1.0}, checkpoint=ref,
                          completed_attempt=trial.attempt, ended_at=ended, initiated=True,
                          history=((trial.attempt, "w0", started, ended),))
    assert store.transition(trial.id, TrialStatus.RUNNING, trial.attempt, done)
    return done


def _healthy(store: LmdbTrialStore, root: Path) -> None:
    """Seed 1 (steps 0-5), its child 2 (5-10) from a tournament of 1, both completed."""
    seed = store.create_trial(
        TrialSpec(generation=0, hparams={"h": 1.0}, start_step=0, end_step=5, origin=Origin(OriginKind.SEED)), now=1.0
    )
    _complete(store, seed, root, 2.0, 3.0)
    child = store.create_trial(
        TrialSpec(
            generation=1,
            hparams={"h": 0.5},
            start_step=5,
            end_step=10,
            origin=Origin(OriginKind.TOURNAMENT, 1, None, 1),
            parent_id=1,
        ),
        3.5,
    )
    _complete(store, child, root, 4.0, 5.0)
    store.put_meta(META_FINISHED_AT, 6.0)


def _twice_initiated(store: LmdbTrialStore, root: Path) -> None:
    twin = store.create_trial(
        TrialSpec(
            generation=1,
            hparams={"h": 0.4},
            start_step=5,
            end_step=10,
            origin=Origin(OriginKind.TOURNAMENT, 1, None, 1),
            parent_id=1,
        ),
        3.6,
    )
    _complete(store, twin, root, 4.0, 5.0)


def _orphaned(store: LmdbTrialStore, root: Path) -> None:
    orphan = store.create_trial(
        TrialSpec(
            generation=2,
            hparams={"h": 0.4},
            start_step=10,
            end_step=15,
            origin=Origin(OriginKind.TOURNAMENT, 2, None, 2),
            parent_id=2,
        ),
        5.5,
    )
    running = orphan.evolve(status=TrialStatus.RUNNING, lease=Lease("w0", 99.0), started_at=5.6, worker="w0")
    assert store.transition(orphan.id, TrialStatus.PENDING, 1, running)


def _early_child(store: LmdbTrialStore, root: Path) -> None:
    early = store.create_trial(
        TrialSpec(
            generation=1,
            hparams={"h": 0.4},
            start_step=5,
            end_step=10,
            origin=Origin(OriginKind.REPLACEMENT, replaces=2),
            parent_id=1,
        ),
        2.5,
    )
    _complete(store, early, root, 2.6, 2.9)


def _missing_file(store: LmdbTrialStore, root: Path) -> None:
    ref = store.get_trial(2).checkpoint
    assert ref is not None
    (root / ref.uri).unlink()


def _tampered_file(store: LmdbTrialStore, root: Path) -> None:
    ref = store.get_trial(1).checkpoint
    assert ref is not None
    data = (root / ref.uri).read_bytes()
    (root / ref.uri).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


BREAKS: dict[str, tuple[Callable[[LmdbTrialStore, Path], None], str]] = {
    "healthy": (lambda s, r: None, ""),
    "initiated twice": (_twice_initiated, "trial 1 initiated 2 times (must be exactly once)"),
    "orphaned running": (_orphaned, "trial 3 is orphaned RUNNING after the run ended"),
    "child before parent": (_early_child, "trial 3 started before its parent 1 completed"),
    "missing checkpoint": (_missing_file, "trial 2: checkpoint x/trial-2.ckpt is missing"),
    "tampered checkpoint": (_tampered_file, "trial 1: checkpoint x/trial-1.ckpt sha256 is"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BREAKS))
def test_verify_names_the_broken_invariant_and_exits_non_zero(tmp_path: Path, case: str) -> None:
    store_dir, root = tmp_path / "store", tmp_path / "ckpt"
    breaker, problem = BREAKS[case]
    with LmdbTrialStore(store_dir) as store:
        _healthy(store, root)
        breaker(store, root)
    report = verify_cli(store_dir, root)  # asserts: exit code 0 exactly when the report is ok
    if not problem:
        assert report["ok"] and report["checkpoints_checked"] == 2, report
        return
    assert not report["ok"]
    assert any(p.startswith(problem) for p in report["problems"]), report["problems"]
