"""A preemption-aware experiment: on SIGTERM (``ctx.should_stop``) it stops between steps and,
with ``PREEMPT_SAVE_ON_STOP=1``, saves a resume checkpoint at the step it reached; with
``PREEMPT_CKPT_EVERY=N`` it also checkpoints every N steps (then a preemption loses at most
the steps since the last of those). Knobs of ``_common`` apply."""

import os
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

experiment = make_experiment("preemptible")

STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)
CKPT_EVERY = int(os.environ.get("PREEMPT_CKPT_EVERY", "0"))
SAVE_ON_STOP = os.environ.get("PREEMPT_SAVE_ON_STOP", "1") == "1"


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()
    assert state["steps"] == ctx.start_step, (state["steps"], ctx.start_step)  # resumed exactly here
    for step in range(ctx.start_step, ctx.end_step):
        if ctx.should_stop:
            if SAVE_ON_STOP:
                ctx.save_checkpoint(state, step=step)
            return None  # the worker reports the attempt as preempted (with the resume point)
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
        if CKPT_EVERY and (step + 1) % CKPT_EVERY == 0 and step + 1 < ctx.end_step:
            ctx.save_checkpoint(state, step=step + 1)
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
