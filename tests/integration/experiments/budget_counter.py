"""A toy experiment whose workers log every attempt's trained step range to a file, so a test
can count the steps actually trained (not just what the controller says it leased)."""

import os

from pbt_actors import Experiment, Float

experiment = Experiment(
    name="budget_counter",
    space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
    objective="Q",
    population=4,
    steps_per_trial=5,
    max_steps=30,
    lease_s=30.0,
    heartbeat_s=0.2,
    seed=0,
)


def train(ctx):
    state = ctx.load_checkpoint() or {"theta": [0.9, 0.9]}
    t0, t1 = state["theta"]
    h0, h1 = float(ctx.hparams["h0"]), float(ctx.hparams["h1"])
    step = ctx.start_step
    for step in range(ctx.start_step, ctx.end_step):
        t0, t1 = t0 - 0.04 * h0 * t0, t1 - 0.04 * h1 * t1
        ctx.report(step + 1, Q=1.2 - (t0 * t0 + t1 * t1))
    trained = ctx.end_step - ctx.start_step
    with open(os.path.join(os.environ["BUDGET_LOG_DIR"], f"{os.getpid()}.log"), "a") as log:
        log.write(f"{ctx.trial_id} {ctx.start_step} {ctx.end_step} {trained}\n")
    ctx.save_checkpoint({"theta": [t0, t1]})
    return {"Q": 1.2 - (t0 * t0 + t1 * t1)}
