"""Run an experiment in this process, one trial at a time, through the real ControllerCore.

Layer 5. No sockets, no actors: ``ControllerCore.handle`` is called directly and ``train(ctx)``
runs inline. Useful for debugging an experiment file with a plain debugger, for notebooks,
and as the framework-free reference in benchmarks. Decisions are identical to a distributed
run that sees the same event order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import CheckpointStoreFault
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import Done, Fail, Report, RequestTrial, TrialAssignment, Wait
from pbt_actors.runtime.worker.trial_context import TrialContext
from pbt_actors.runtime.worker.trial_runner import build_context, execute
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TrialStore


def run_inprocess(experiment: Experiment, train: Callable[[TrialContext], Any], checkpoint_root: str | Path, *,
                  store: TrialStore | None = None, workers: int = 1, device: str = "cpu",
                  clock: Callable[[], float] = time.time) -> ControllerCore:
    """Run to the end with ``workers`` virtual workers taking turns; returns the core.

    Raises:
        CheckpointStoreFault: a checkpoint could not be written (its trial was re-queued
            uncharged; the same call on the same ``store`` resumes once the store is fixed).

    With ``workers > 1`` the virtual workers lease trials round-robin before any of them
    reports, which reproduces the asynchrony (several trials in flight) of a real run.
    """
    core = ControllerCore(store if store is not None else InMemoryTrialStore(), experiment, now=clock())
    names = [f"inproc-{i}" for i in range(workers)]
    while True:
        leased: list[tuple[str, TrialAssignment]] = []
        for name in names:
            reply = core.handle(RequestTrial(name), clock())
            if isinstance(reply, TrialAssignment):
                leased.append((name, reply))
        if not leased:
            if core.finished:
                return core
            reply = core.handle(RequestTrial(names[0]), clock())
            if isinstance(reply, Done):
                return core
            if isinstance(reply, Wait) and core.checkpoint_store_fault is not None:
                raise CheckpointStoreFault(f"the checkpoint store cannot be written: {core.checkpoint_store_fault}")
            if isinstance(reply, Wait):
                raise RuntimeError("in-process run is waiting with nothing running: a policy stalled")
            continue
        for name, spec in leased:
            outcome = run_assignment(name, spec, train, str(checkpoint_root), device,
                                     objective=experiment.objective_.names)
            if outcome is not None:
                core.handle(outcome, clock())


def run_assignment(worker: str, spec: TrialAssignment, train: Callable[[TrialContext], Any], checkpoint_root: str,
                   device: str = "cpu", *, objective: Sequence[str] = ()) -> Report | Fail | None:
    """Run one assignment inline and build the message a worker would send (the same
    ``pbt_actors.runtime.worker.trial_runner`` a worker uses: a checkpoint that cannot be *written* is the
    store's fault, not the trial's; one that cannot be *read* is the trial's). ``None``: the trial was stopped and
    has nothing to report (no controller asks for that in process, so it does not happen)."""
    return execute(build_context(spec, checkpoint_root, device), train, worker, objective=objective)
