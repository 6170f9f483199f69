"""A simulated run with preemption leaves the same kind of LMDB store as a real run.

The real run is ``pbt-actors run`` on the toy experiment (controller, worker processes over
ZeroMQ, checkpoint files); the simulated one drives the same experiment definition through
the simulator with preempted workers (supervised ``WorkerLost`` and silent lease expiry). Both
stores must pass every ``verify_store`` invariant, be readable by the CLI (``verify``,
``status``), and record the same things in the same shape.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pbt_actors.model.records import OriginKind, Trial, TrialStatus
from pbt_actors.runtime.host.launch import load_experiment_file
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT, META_FINISHED_AT, TrialStore
from pbt_actors.tools.sim import SimConfig, Simulation, ToyQuadratic
from pbt_actors.tools.verify import verify_store
from tests.support.runs import TOY, cli


def _shape(store: TrialStore) -> dict[str, object]:
    trials = list(store.iter_trials())
    return {
        "record_keys": {frozenset(t.to_dict()) for t in trials},
        "statuses": {t.status for t in trials},
        "origins": {t.origin.kind for t in trials},
        "experiment_stored": store.get_meta(META_EXPERIMENT) is not None,
        "finished_stamped": store.get_meta(META_FINISHED_AT) is not None,
    }


def _graph_invariants(trials: list[Trial], population: int) -> None:
    by_id = {t.id: t for t in trials}
    assert [t.id for t in trials] == list(range(1, len(trials) + 1))
    assert sum(1 for t in trials if t.generation == 0) == population
    for t in trials:
        assert t.status is TrialStatus.COMPLETED and t.initiated
        assert t.checkpoint is not None and t.checkpoint.step == t.end_step
        assert t.history and t.history[-1][0] == t.completed_attempt  # every attempt is on record
        if t.parent_id is not None:
            parent = by_id[t.parent_id]
            assert t.origin.kind is OriginKind.TOURNAMENT and t.origin.winner == parent.id
            assert t.generation == by_id[t.origin.initiator].generation + 1
            assert t.start_step == parent.end_step and t.history[0][2] >= (parent.ended_at or 0)


@pytest.mark.timeout(120)
def test_simulated_run_with_preemption_leaves_the_same_kind_of_store_as_a_real_run(tmp_path: Path) -> None:
    experiment, _ = load_experiment_file(str(TOY))
    real_dir = tmp_path / "real"
    proc = cli("run", str(TOY), "--workers", "2", "--devices", "cpu", "--store", str(real_dir), "--json")
    out, _ = proc.communicate(timeout=100)
    assert proc.returncode == 0, out

    sim_dir = tmp_path / "sim"
    sim_experiment = replace(experiment, heartbeat_s=None)  # heartbeats at a third of the lease
    config = SimConfig(workers=3, trial_s=20.0, speed_spread=0.3, preempt_rate=60.0, lost_notice=0.5,
                       restart_s=5.0, seed=1)
    store = LmdbTrialStore(sim_dir, sync=False)
    try:
        result = Simulation(sim_experiment, ToyQuadratic(alpha=0.02), config, store).run()
        assert result.finished and not result.errors
        assert result.trials_lost >= 3 and result.leases_expired >= 1  # both kinds of loss happened
    finally:
        store.close()

    with LmdbTrialStore(real_dir, readonly=True) as real, LmdbTrialStore(sim_dir, readonly=True) as sim:
        real_report = verify_store(real, real_dir / "checkpoints", finished=True)
        sim_report = verify_store(sim, None, finished=True)
        assert real_report.ok, real_report.problems
        assert sim_report.ok, sim_report.problems
        assert real_report.checkpoints_checked == real_report.trials  # real files, sha-checked
        assert _shape(real) == _shape(sim)
        real_trials, sim_trials = list(real.iter_trials()), list(sim.iter_trials())
        _graph_invariants(real_trials, experiment.population)
        _graph_invariants(sim_trials, experiment.population)
        retried = [t for t in sim_trials if t.completed_attempt is not None and t.completed_attempt > 1]
        assert retried, "preempted trials must be re-queued by the core as new attempts"
        for trial in retried:  # the lost attempts are in the history, by a worker, with times
            assert [h[0] for h in trial.history] == list(range(1, trial.completed_attempt + 1))
            assert trial.error is not None and ("lost" in trial.error or "lease expired" in trial.error)
        stored = _stored_experiment(sim)
        assert stored["name"] == experiment.name and stored["policy"] == experiment.policy

    for args in (["verify", "--store", str(sim_dir), "--json"], ["status", "--store", str(sim_dir), "--json"]):
        proc = cli(*args)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        data = json.loads(out.strip().splitlines()[-1])
        assert data.get("ok", True) and data.get("finished", True)


def _stored_experiment(store: TrialStore) -> dict[str, object]:
    raw = store.get_meta(META_EXPERIMENT)
    assert isinstance(raw, dict)
    return raw
