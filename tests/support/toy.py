"""Jaderberg et al.'s toy problem and an in-process worker loop that drives ControllerCore.

Q(θ) = 1.2 − (θ0² + θ1²) is the true objective; workers ascend the surrogate
Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²), so a fixed h = [1, 0] or [0, 1] can never reach 1.2.
Checkpoints are θ kept in a dict (the "checkpoint root"), referenced by uri and sha256.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from dataclasses import dataclass, field

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import Done, Report, RequestTrial, TrialAssignment, Wait
from pbt_actors.model.records import CheckpointRef, trial_checkpoint_prefix
from pbt_actors.model.space import Float

ALPHA = 0.02


def toy_experiment(policy: str, seed: int, **overrides: object) -> Experiment:
    settings: dict[str, object] = dict(
        name=f"toy-{policy}", space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)}, objective="Q",
        population=2, steps_per_trial=5, max_steps=300, policy=policy,
        initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}], seed=seed,
        crossover_prob=0.5 if policy == "initiator" else 0.0, truncation_quantile=0.5,
    )
    settings.update(overrides)
    return Experiment(**settings)  # type: ignore[arg-type]


def q_true(theta: tuple[float, float]) -> float:
    return 1.2 - (theta[0] ** 2 + theta[1] ** 2)


def train_toy(theta: tuple[float, float], h0: float, h1: float, steps: int) -> tuple[float, float]:
    t0, t1 = theta
    for _ in range(steps):
        t0, t1 = t0 - ALPHA * 2 * h0 * t0, t1 - ALPHA * 2 * h1 * t1
    return t0, t1


@dataclass
class ToyCluster:
    """Virtual workers with fixed speeds; events are processed in virtual-time order."""

    core: ControllerCore
    workers: int = 2
    speeds: tuple[float, ...] = (1.0, 1.3, 0.8, 1.1)
    checkpoints: dict[str, tuple[float, float]] = field(default_factory=dict)
    now: float = 0.0

    def save(self, trial_id: int, attempt: int, theta: tuple[float, float], step: int,
             experiment: str = "exp") -> CheckpointRef:
        data = struct.pack("<dd", *theta)
        uri = f"{trial_checkpoint_prefix(experiment, trial_id)}a{attempt}.ckpt"
        self.checkpoints[uri] = theta
        return CheckpointRef(uri, len(data), hashlib.sha256(data).hexdigest(), step)

    def run_trial(self, spec: TrialAssignment) -> tuple[tuple[float, float], Report]:
        theta = (0.9, 0.9) if spec.parent_checkpoint is None else self.checkpoints[spec.parent_checkpoint.uri]
        theta = train_toy(theta, float(spec.hparams["h0"]), float(spec.hparams["h1"]),
                          spec.end_step - spec.start_step)
        ckpt = self.save(spec.trial_id, spec.attempt, theta, spec.end_step, spec.experiment)
        return theta, Report(worker="", trial_id=spec.trial_id, attempt=spec.attempt,
                             final={"Q": q_true(theta)}, checkpoint=ckpt)

    def run(self, max_events: int = 100_000) -> None:
        queue: list[tuple[float, int, Report | None]] = [(0.0, w, None) for w in range(self.workers)]
        heapq.heapify(queue)
        for _ in range(max_events):
            if not queue:
                return
            self.now, worker, pending = heapq.heappop(queue)
            name = f"w{worker}"
            if pending is not None:
                self.core.handle(Report(name, pending.trial_id, pending.attempt, pending.final,
                                        pending.measurements, pending.checkpoint), self.now)
            reply = self.core.handle(RequestTrial(name), self.now)
            if isinstance(reply, Done):
                continue
            if isinstance(reply, Wait):
                heapq.heappush(queue, (self.now + reply.retry_after_s, worker, None))
                continue
            assert isinstance(reply, TrialAssignment), reply
            _, report = self.run_trial(reply)
            duration = (reply.end_step - reply.start_step) * self.speeds[worker % len(self.speeds)]
            heapq.heappush(queue, (self.now + duration, worker, report))
        raise AssertionError("toy run did not finish")
