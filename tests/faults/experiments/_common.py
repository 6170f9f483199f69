"""Shared pieces of the fault-suite experiments (not an experiment file itself).

The toy problem of ``tests/integration/experiments/toy_lineage.py`` (Jaderberg et al.'s
quadratic), with the knobs the fault tests turn through environment variables:

``FAULT_POPULATION``, ``FAULT_STEPS_PER_TRIAL``, ``FAULT_MAX_STEPS``, ``FAULT_LEASE_S``,
``FAULT_SEED``, ``FAULT_MAX_ATTEMPTS``
    the experiment's shape (defaults: 4, 5, 30, 30 s, 0, 3).
``FAULT_STEP_SLEEP_S``
    seconds each step sleeps (0 by default): how long a trial lasts.
``FAULT_TRACE_DIR``
    if set, every executed step appends ``"<trial> <attempt> <step>"`` to
    ``<dir>/<pid>.trace`` with one ``write(2)`` (so the line survives a SIGKILL right after).
    Tests count from it the steps done, redone and lost.

Every checkpoint holds ``steps``: how many steps the lineage's state has been trained for.
A completed trial whose checkpoint says ``steps == end_step`` lost and repeated nothing *in
its state*, whatever happened to the processes that trained it.
"""

from __future__ import annotations

import os
from typing import Any

from pbt_actors import Experiment, Float, Retention

ALPHA = 0.02


def knob(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def make_experiment(name: str, **overrides: Any) -> Experiment:
    settings: dict[str, Any] = dict(
        name=name,
        space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
        objective="Q",
        population=int(knob("FAULT_POPULATION", 4)),
        steps_per_trial=int(knob("FAULT_STEPS_PER_TRIAL", 5)),
        max_steps=int(knob("FAULT_MAX_STEPS", 30)),
        initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}],
        crossover_prob=0.5,
        lease_s=knob("FAULT_LEASE_S", 30),
        heartbeat_s=0.2,
        max_attempts=int(knob("FAULT_MAX_ATTEMPTS", 3)),
        seed=int(knob("FAULT_SEED", 0)),
        retention=Retention(enabled=False),  # the fault tests audit every checkpoint file after the run
    )
    settings.update(overrides)
    return Experiment(**settings)


def initial_state() -> dict[str, Any]:
    return {"theta": [0.9, 0.9], "steps": 0}


def q(state: dict[str, Any]) -> float:
    t0, t1 = state["theta"]
    return 1.2 - (t0 * t0 + t1 * t1)


def advance(state: dict[str, Any], hparams: Any) -> dict[str, Any]:
    """One training step of the toy (in place), counted in the state."""
    t0, t1 = state["theta"]
    h0, h1 = float(hparams["h0"]), float(hparams["h1"])
    state["theta"] = [t0 - ALPHA * 2 * h0 * t0, t1 - ALPHA * 2 * h1 * t1]
    state["steps"] += 1
    return state


class Trace:
    """Append-only per-process log of executed steps (see the module docstring)."""

    def __init__(self) -> None:
        folder = os.environ.get("FAULT_TRACE_DIR")
        self.fd: int | None = None
        if folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{os.getpid()}.trace")
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def step(self, ctx: Any, step: int) -> None:
        if self.fd is not None:
            os.write(self.fd, f"{ctx.trial_id} {ctx.attempt} {step}\n".encode())


TRACE = Trace()
