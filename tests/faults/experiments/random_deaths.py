"""Random worker deaths spread over different trials (issue 20, item 6): ``DEATH_RATE`` (0.2 by
default) of all attempts SIGKILL their own worker process part-way, as the out-of-memory killer
does on some configurations. Which attempts die is drawn from ``(trial id, attempt)``, so a
retry of a killed attempt may live."""

import os
import random
import signal
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

experiment = make_experiment("random_deaths")
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)
DEATH_RATE = knob("DEATH_RATE", 0.2)


def train(ctx):
    dies = random.Random(f"death:{ctx.trial_id}:{ctx.attempt}").random() < DEATH_RATE
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        if dies and step == ctx.start_step + 2:
            os.kill(os.getpid(), signal.SIGKILL)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
