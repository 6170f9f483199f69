"""The experiment of ``test_hardening_chaos.py``: the toy of ``_common.py`` where some trial ids
misbehave on every attempt, each in its own way, in one run.

``CHAOS_POISON_TRIALS=2``
    a poison configuration: the worker process running it SIGKILLs itself (as the OOM killer
    does), every attempt;
``CHAOS_HANG_TRIALS=3``
    ``train`` sleeps forever (not interruptible) while the worker's heartbeats go on;
``CHAOS_TRIAL_TIMEOUT_S``
    the experiment's ``trial_timeout_s`` (unset: its default).

Other trials are the plain toy: ``Q = 1.2 - |theta|^2`` can never exceed 1.2."""

import os
import signal
import time

from _common import advance, initial_state, knob, make_experiment, q

_TIMEOUT = os.environ.get("CHAOS_TRIAL_TIMEOUT_S")
experiment = make_experiment("hardening_chaos", **({"trial_timeout_s": float(_TIMEOUT)} if _TIMEOUT else {}))
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)


def _ids(name):
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


POISON = _ids("CHAOS_POISON_TRIALS")
HANG = _ids("CHAOS_HANG_TRIALS")


def train(ctx):
    if ctx.trial_id in POISON:
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.trial_id in HANG:
        while True:
            time.sleep(3600)
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
