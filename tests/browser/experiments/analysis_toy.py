"""A 300-trial run for the dashboard's analysis views: ten lineages of thirty 2-step trials.

The toy quadratic with a log-scale learning rate (``lr``: the schedule's log axis, the
parallel coordinates' log10 axis) beside ``h0``/``h1``; every trial reports each step (the
per-step curves) and prints a line naming itself (the trial's own log lines); the first attempt
of every eleventh trial raises (a retried failure with a traceback, which the dashboard must
count and list although the trial then completes).
"""

from pbt_actors import Experiment, Float

experiment = Experiment(
    name="analysis_toy",
    space={"lr": Float(1e-3, 1.0, log=True), "h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
    objective="Q",
    population=10,
    steps_per_trial=2,
    max_steps=60,
    crossover_prob=0.3,
    lease_s=20.0,
    seed=3,
)


def train(ctx):
    state = ctx.load_checkpoint() or {"theta": [0.9, 0.9]}
    t0, t1 = state["theta"]
    lr, h0, h1 = float(ctx.hparams["lr"]), float(ctx.hparams["h0"]), float(ctx.hparams["h1"])
    print(f"trial {ctx.trial_id} attempt {ctx.attempt}: training steps {ctx.start_step}-{ctx.end_step}", flush=True)
    if ctx.trial_id % 11 == 0 and ctx.attempt == 1:
        raise RuntimeError(f"injected failure of trial {ctx.trial_id}, attempt 1")
    q = 1.2 - (t0 * t0 + t1 * t1)
    for step in range(ctx.start_step, ctx.end_step):
        a = 0.03 * lr ** 0.5
        t0, t1 = t0 - a * 2 * h0 * t0, t1 - a * 2 * h1 * t1
        q = 1.2 - (t0 * t0 + t1 * t1)
        if not ctx.report(step + 1, Q=q):
            ctx.save_checkpoint({"theta": [t0, t1]}, step=step + 1)
            return {"Q": q}
    ctx.save_checkpoint({"theta": [t0, t1]})
    return {"Q": q}
