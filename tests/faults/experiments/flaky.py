"""Trials that raise. ``FLAKY_ALWAYS=3,7``: those trial ids raise on every attempt;
``FLAKY_ONCE=2``: those raise on their first attempt only. The exception comes from a
named helper so the reported traceback can be recognised."""

import os
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

experiment = make_experiment("flaky")
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)


def _ids(name):
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


ALWAYS, ONCE = _ids("FLAKY_ALWAYS"), _ids("FLAKY_ONCE")


def _diverge(ctx, step):
    raise FloatingPointError(f"flaky: trial {ctx.trial_id} attempt {ctx.attempt} diverged at step {step}")


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        if step == ctx.start_step + 2 and (ctx.trial_id in ALWAYS or (ctx.trial_id in ONCE and ctx.attempt == 1)):
            _diverge(ctx, step)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
