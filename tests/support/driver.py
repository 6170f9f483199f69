"""Drive a ControllerCore by hand, message by message, with a fake clock: no threads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.protocol import (
    Done,
    Fail,
    Heartbeat,
    Reply,
    Report,
    RequestTrial,
    TrialAssignment,
    Wait,
)
from pbt_actors.model.records import CheckpointRef, Trial, trial_checkpoint_prefix
from pbt_actors.storage.trial_store import TrialStore


def fake_checkpoint(trial_id: int, attempt: int, step: int, experiment: str = "exp") -> CheckpointRef:
    """A ref under the trial's own prefix (the controller refuses any other)."""
    data = f"{trial_id}:{attempt}:{step}".encode()
    return CheckpointRef(f"{trial_checkpoint_prefix(experiment, trial_id)}a{attempt}.ckpt", len(data),
                         hashlib.sha256(data).hexdigest(), step)


@dataclass
class Driver:
    core: ControllerCore
    now: float = 0.0

    @property
    def store(self) -> TrialStore:
        return self.core.store

    def request(self, worker: str) -> Reply:
        return self.core.handle(RequestTrial(worker), self.now)

    def lease(self, worker: str) -> TrialAssignment:
        reply = self.request(worker)
        assert isinstance(reply, TrialAssignment), reply
        return reply

    def report(self, worker: str, spec: TrialAssignment, value: float, metric: str = "score") -> Reply:
        return self.core.handle(
            Report(worker, spec.trial_id, spec.attempt, {metric: value},
                   checkpoint=fake_checkpoint(spec.trial_id, spec.attempt, spec.end_step, spec.experiment)), self.now)

    def heartbeat(self, worker: str, spec: TrialAssignment, step: int, metrics=None) -> Reply:
        return self.core.handle(Heartbeat(worker, spec.trial_id, spec.attempt, step, metrics), self.now)

    def fail(self, worker: str, spec: TrialAssignment, error: str = "boom", retryable: bool = True) -> Reply:
        return self.core.handle(Fail(worker, spec.trial_id, spec.attempt, error, retryable), self.now)

    def trial(self, trial_id: int) -> Trial:
        return self.store.get_trial(trial_id)


def graph(store: TrialStore) -> list[dict]:
    """The trial graph minus wall-clock noise, for determinism comparisons."""
    return [t.to_dict() for t in store.iter_trials()]


def drive_in_fixed_order(core: ControllerCore, score: Callable[[TrialAssignment], float],
                         restart_after: int | None = None,
                         reopen: Callable[[TrialStore], TrialStore] | None = None) -> ControllerCore:
    """Three virtual workers and a fixed completion order, to the end of the run; after
    ``restart_after`` reports the controller dies and a new core opens ``reopen(store)`` (a
    restart must decide exactly as if it never happened). Returns the last core."""
    d = Driver(core)
    running: list[tuple[str, TrialAssignment]] = []
    events = 0
    while True:
        for worker in ("w0", "w1", "w2"):
            if any(w == worker for w, _ in running):
                continue
            reply = d.request(worker)
            if isinstance(reply, TrialAssignment):
                running.append((worker, reply))
            else:
                assert isinstance(reply, Done | Wait)
        if not running:
            return d.core
        worker, spec = running.pop(events % len(running))
        d.now += 1.0
        d.report(worker, spec, score(spec))
        events += 1
        if events == restart_after and reopen is not None:
            d.core = ControllerCore(reopen(d.core.store), d.core.experiment)


def random_run(core: ControllerCore, choose, workers: int = 3, duplicate_prob: float = 0.0,
               score=None, on_step=None, max_steps: int = 5000) -> None:
    """Run to the end with completion order picked by ``choose(n) -> index`` (hypothesis or rng).

    ``score(spec)`` gives the reported metric (default: a deterministic hash of the hparams
    plus progress); with ``duplicate_prob`` a report is sometimes delivered twice.
    """
    from pbt_actors.model.protocol import Done, Wait

    driver = Driver(core)
    running: list[tuple[str, TrialAssignment]] = []
    idle = [f"w{i}" for i in range(workers)]
    score = score or (lambda spec: sum(float(v) for v in spec.hparams.values()
                                       if isinstance(v, int | float)) + spec.end_step / 100)
    for _ in range(max_steps):
        driver.now += 1.0
        progressed = False
        while idle:
            reply = driver.request(idle[0])
            if isinstance(reply, TrialAssignment):
                running.append((idle.pop(0), reply))
                progressed = True
            elif isinstance(reply, Done | Wait):
                break
        if not running:
            assert core.finished, "nothing running, nothing pending, yet not finished"
            return
        worker, spec = running.pop(choose(len(running)))
        driver.report(worker, spec, score(spec))
        if duplicate_prob and choose(1000) < duplicate_prob * 1000:
            driver.report(worker, spec, score(spec))
        idle.append(worker)
        if on_step is not None:
            on_step(driver)
        progressed = True
        assert progressed
    raise AssertionError("run did not finish")
