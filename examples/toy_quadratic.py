"""Jaderberg et al.'s toy problem (PBT paper, fig. 2), with no torch.

Maximise Q(θ) = 1.2 − (θ0² + θ1²) while each worker only ascends the surrogate
Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²). Fixed h = [1, 0] or [0, 1] can never reach Q = 1.2;
PBT gets there by copying θ from the better member and exploring h.

    pbt-actors run examples/toy_quadratic.py --workers 2
"""

from pbt_actors import Experiment, Float

ALPHA = 0.02

experiment = Experiment(
    name="toy_quadratic",
    space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
    objective="Q",
    population=2,
    steps_per_trial=5,
    max_steps=150,
    initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}],
    crossover_prob=0.5,
    lease_s=20.0,
    seed=0,
)


def train(ctx):
    state = ctx.load_checkpoint() or {"theta": [0.9, 0.9]}
    t0, t1 = state["theta"]
    h0, h1 = float(ctx.hparams["h0"]), float(ctx.hparams["h1"])
    for step in range(ctx.start_step, ctx.end_step):
        t0, t1 = t0 - ALPHA * 2 * h0 * t0, t1 - ALPHA * 2 * h1 * t1
        if not ctx.report(step + 1, Q=1.2 - (t0 * t0 + t1 * t1)):
            # stopped or preempted (SIGTERM): save where we are, so a preempted trial resumes
            # here instead of counting as trained to end_step
            ctx.save_checkpoint({"theta": [t0, t1]}, step=step + 1)
            return {"Q": 1.2 - (t0 * t0 + t1 * t1)}
    ctx.save_checkpoint({"theta": [t0, t1]})
    return {"Q": 1.2 - (t0 * t0 + t1 * t1)}
