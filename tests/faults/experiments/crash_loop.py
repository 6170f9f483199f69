"""A worker that cannot work. ``CRASH_AT=import``: importing this file fails in a worker
process (the host's own fail-fast import still succeeds, so only its workers crash-loop);
``CRASH_AT=train``: ``train`` kills its process at the start of every trial (like a CUDA
initialisation crash). Without ``CRASH_AT`` it is the plain toy."""

import os
import sys
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

CRASH_AT = os.environ.get("CRASH_AT", "")

if CRASH_AT == "import" and "worker-process" in sys.argv:
    raise RuntimeError("crash_loop: this worker's experiment cannot be imported (simulated broken install)")

experiment = make_experiment("crash_loop")
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)


def train(ctx):
    if CRASH_AT == "train":
        os._exit(70)  # a hard crash: no report, no traceback, just a dead process
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
