"""What the SLURM tests share: submitting the example scripts with this checkout's pbt-actors,
reading the run's store, and the checks every run must pass (no trial lost or completed twice,
compute redone bounded by the work in flight)."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from pbt_actors.model.errors import StoreError
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.checkpoint_payloads import load_checkpoint
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.tools.verify import verify_store
from tests.cluster.slurm import SlurmCluster
from tests.faults.harness import EXPERIMENTS, read_trace
from tests.support.runs import REPO

SLURM_DIR = REPO / "examples" / "slurm"
TOY = REPO / "examples" / "toy_quadratic.py"
PREEMPTIBLE = EXPERIMENTS / "preemptible.py"  # the same toy problem, with a step sleep, a trace, resume checkpoints


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    """One PBT run's folders, and the environment its jobs are submitted with."""

    shared: Path
    env: dict[str, str]

    @classmethod
    def make(cls, shared: Path, experiment: Path, **knobs: object) -> Run:
        shared.mkdir(parents=True, exist_ok=True)
        env = {
            "PBT_EXPERIMENT": str(experiment),
            "PBT_SHARED": str(shared),
            "PBT_PORT": str(free_port()),
            # one machine: the "nodes" reach the controller on loopback (a real cluster resolves
            # the first node's name; see docs/clusters.md)
            "PBT_CONTROLLER_HOST": "127.0.0.1",
            "PBT_BIND_HOST": "127.0.0.1",
            "PBT_CMD": f"{sys.executable} -m pbt_actors.cli",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "FAULT_TRACE_DIR": str(shared / "trace"),
            **{k: str(v) for k, v in knobs.items()},
        }
        return cls(shared, env)

    @property
    def store(self) -> Path:
        return self.shared / "store"

    @property
    def checkpoints(self) -> Path:
        return self.shared / "checkpoints"

    def submit(self, slurm: SlurmCluster, script: str, *options: str) -> int:
        return slurm.sbatch("--chdir", str(self.shared), f"--output={self.shared}/%x-%j.out", *options,
                            str(SLURM_DIR / script), env=self.env)

    def output(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-6000:]}"
                         for p in sorted(self.shared.glob("*.out")))

    def trials(self) -> list[Trial]:
        """The store's trials while the run goes on (polling); none before the controller made it."""
        if not (self.store / "data.mdb").exists():
            return []
        try:
            with LmdbTrialStore(self.store, readonly=True) as store:
                return list(store.iter_trials())
        except StoreError as exc:  # the controller created the LMDB file but not yet its databases
            if "without our databases" in str(exc):
                return []
            raise

    def completed(self) -> list[Trial]:
        return [t for t in self.trials() if t.status is TrialStatus.COMPLETED]

    def running(self) -> list[Trial]:
        return [t for t in self.trials() if t.status is TrialStatus.RUNNING]


def assert_finished_once(run: Run, lineages: int, max_steps: int, steps_per_trial: int,
                         traced: bool = True) -> list[Trial]:
    """The store verifies clean, every trial (ids 1..N, dense) completed, at least one trial per
    lineage and trial length (the initiator policy may add a few), and ``lineages`` trials
    reached ``max_steps``.
    ``traced`` (the preemptible toy): each completed checkpoint's state was trained for exactly
    its end step, and only the completing attempt trained up to the end step."""
    with LmdbTrialStore(run.store, readonly=True) as store:
        report = verify_store(store, run.checkpoints, finished=True)
        assert report.ok, report.problems
        trials = list(store.iter_trials())
    assert sorted(t.id for t in trials) == list(range(1, len(trials) + 1))
    assert len(trials) >= lineages * -(-max_steps // steps_per_trial)
    assert sum(1 for t in trials if t.end_step == max_steps) >= lineages
    assert all(t.status is TrialStatus.COMPLETED and t.completed_attempt is not None for t in trials), \
        [(t.id, t.status.value, t.error) for t in trials if t.status is not TrialStatus.COMPLETED]
    if not traced:
        return trials
    for trial in trials:
        assert trial.checkpoint is not None
        assert load_checkpoint(run.checkpoints, trial.checkpoint)["steps"] == trial.end_step, trial.id
    trace = read_trace(run.shared / "trace")
    for trial in trials:  # one attempt only trained up to the end step: nothing completed twice
        finishing = [a for (tid, a), steps in trace.items() if tid == trial.id and trial.end_step - 1 in steps]
        assert finishing == [trial.completed_attempt], (trial.id, finishing, trial.completed_attempt)
    return trials


def steps_redone(run: Run, trials: list[Trial]) -> int:
    """Steps trained more than once: every step the trace saw, less the steps the trials needed."""
    trace = read_trace(run.shared / "trace")
    executed = sum(len(steps) for steps in trace.values())
    needed = sum(t.steps for t in trials)
    assert executed >= needed, (executed, needed)  # fewer would mean a trial's work was lost
    return executed - needed


def worker_hosts(trials: list[Trial]) -> set[str]:
    """The host ids (``<node>-j<job>``) of the workers that completed ``trials``."""
    return {t.worker.split("-w", 1)[0] for t in trials if t.worker}
