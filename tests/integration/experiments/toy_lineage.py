"""The toy problem, recording in each checkpoint which parent checkpoint it started from, so
tests can prove every child warm-started from exactly its parent's file."""

import os

from pbt_actors import Experiment, Float, Retention

experiment = Experiment(
    name="toy_lineage",
    space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
    objective="Q",
    population=4,
    steps_per_trial=5,
    max_steps=int(os.environ.get("TOY_MAX_STEPS", "30")),
    initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}],
    crossover_prob=0.5,
    lease_s=float(os.environ.get("TOY_LEASE_S", "30")),
    heartbeat_s=0.2,
    seed=int(os.environ.get("TOY_SEED", "0")),
    retention=Retention(enabled=False),  # the tests audit every checkpoint file after the run
)

STEP_SLEEP_S = float(os.environ.get("TOY_STEP_SLEEP_S", "0"))


def train(ctx):
    import time

    state = ctx.load_checkpoint() or {"theta": [0.9, 0.9]}
    t0, t1 = state["theta"]
    h0, h1 = float(ctx.hparams["h0"]), float(ctx.hparams["h1"])
    for step in range(ctx.start_step, ctx.end_step):
        if STEP_SLEEP_S:
            time.sleep(STEP_SLEEP_S)
        t0, t1 = t0 - 0.02 * 2 * h0 * t0, t1 - 0.02 * 2 * h1 * t1
        if not ctx.report(step + 1, Q=1.2 - (t0 * t0 + t1 * t1)):
            break
    parent = ctx.parent_checkpoint
    ctx.save_checkpoint({"theta": [t0, t1], "trial": ctx.trial_id,
                         "parent_sha256": parent.sha256 if parent else None})
    return {"Q": 1.2 - (t0 * t0 + t1 * t1)}
