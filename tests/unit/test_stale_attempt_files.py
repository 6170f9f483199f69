"""Issue 21, item 3: the resume checkpoints of completed trials' earlier attempts are found
(``stale_attempt_files``) and deleted with the rest, never a file a record still needs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pbt_actors.model.records import TrialStatus
from pbt_actors.runtime.controller.checkpoint_collector import (
    local_deleter,
    stale_attempt_files,
    sweep_stale_attempt_files,
)
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.tools.sim.engine import simulate
from pbt_actors.tools.sim.objectives import make_objective

pytestmark = pytest.mark.timeout(60)


def test_only_files_no_record_needs_are_stale(tmp_path: Path) -> None:
    store = InMemoryTrialStore()
    _, sim = simulate(make_objective("curve"), population=3, seed=2, store=store, max_trials=9)
    trials = list(store.iter_trials())
    done = [t for t in trials if t.status is TrialStatus.COMPLETED and t.checkpoint is not None]
    assert len(done) >= 3
    experiment = sim.experiment.name
    kept, collected = done[0], done[1]
    with store.batch():  # retention deleted its final checkpoint
        assert store.transition(collected.id, TrialStatus.COMPLETED, collected.attempt,
                                collected.evolve(collected_at=1.0))
    prefix = kept.checkpoint.uri.rsplit("/", 1)[0]
    resume = f"{prefix}/a1-s2-resume.ckpt"  # a preempted attempt's
    other_prefix = collected.checkpoint.uri.rsplit("/", 1)[0]
    uris = [t.checkpoint.uri for t in done] + [resume, f"{other_prefix}/a1-s1.ckpt",
                                              f"other-experiment/trial-{kept.id:06d}/x.ckpt",
                                              "hosts/supervisor-h1.json", f"{experiment}/trial-999999/a1.ckpt"]
    stale = sorted(stale_attempt_files(store, uris, experiment))
    assert stale == sorted([(kept.id, resume), (collected.id, collected.checkpoint.uri),
                            (collected.id, f"{other_prefix}/a1-s1.ckpt")])

    # on disk, through the sweep: the stale files go, the final checkpoints stay
    for uri in uris:
        (tmp_path / uri).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / uri).write_bytes(b"x")
    swept, errors = sweep_stale_attempt_files(store, tmp_path, experiment, local_deleter(tmp_path))
    assert not errors and sorted(swept) == stale
    assert not (tmp_path / resume).exists() and (tmp_path / kept.checkpoint.uri).exists()
    assert all((tmp_path / t.checkpoint.uri).exists() for t in done if t.id != collected.id)
    dry, _ = sweep_stale_attempt_files(store, tmp_path, experiment, local_deleter(tmp_path), dry_run=True)
    assert dry == []  # nothing left to sweep


def test_a_kept_directory_checkpoint_and_output_logs_are_never_stale() -> None:
    """A directory checkpoint is its manifest plus the files under ``<name>.files/`` (both
    needed), and a command trial's ``output-aN.log`` files are what ``status --output`` shows:
    neither is a leftover of an earlier attempt."""
    store = InMemoryTrialStore()
    _, sim = simulate(make_objective("curve"), population=2, seed=3, store=store, max_trials=4)
    done = [t for t in store.iter_trials() if t.status is TrialStatus.COMPLETED and t.checkpoint is not None]
    trial = done[0]
    prefix = trial.checkpoint.uri.rsplit("/", 1)[0]
    manifest = f"{prefix}/a1-s5-0123456789abcdef.manifest"
    with store.batch():
        assert store.transition(trial.id, TrialStatus.COMPLETED, trial.attempt, trial.evolve(
            checkpoint=msgspec.structs.replace(trial.checkpoint, uri=manifest)))
    kept_files = [f"{prefix}/a1-s5-0123456789abcdef.files/model/weights.bin",
                  f"{prefix}/a1-s5-0123456789abcdef.files/config.json"]
    stale_dir = [f"{prefix}/a1-s2-fedcba9876543210.manifest", f"{prefix}/a1-s2-fedcba9876543210.files/w.bin"]
    logs = [f"{prefix}/output-a1.log", f"{prefix}/output-a2.log"]
    uris = [manifest, *kept_files, *stale_dir, *logs, f"{prefix}/output-a1.log.tmp"]
    stale = sorted(uri for _, uri in stale_attempt_files(store, uris, sim.experiment.name))
    assert stale == sorted([*stale_dir, f"{prefix}/output-a1.log.tmp"])
