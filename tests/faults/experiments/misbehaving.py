"""Trials that misbehave in the ways an adversarial tryout found (issue "hardening", items
10-15). ``MISBEHAVE_TRIALS=2,5`` picks the trial ids (every attempt), ``MISBEHAVE`` how:

``final=abc`` / ``final=none`` / ``final=huge``
    ``train`` returns ``{"Q": "abc" | None | 10**400}``;
``report=abc``
    ``ctx.report`` gets ``Q="abc"``;
``return=none`` / ``return=list`` / ``return=other``
    ``train`` returns None / a list / ``{"loss": 1.0}``, never reporting ``Q``;
``exit0``
    ``train`` calls ``sys.exit(0)``;
``sigkill``
    the worker process SIGKILLs itself (as the OOM killer does);
``hang``
    ``train`` sleeps forever (a stuck C call: not interruptible);
``flood``
    ``ctx.report`` is called ``MISBEHAVE_REPORTS`` (default 60 000) times.
``fat``
    ``train`` returns ``Q`` and 60 000 more metrics: a result too large for one frame.

Other trials are the plain toy of ``_common.py``."""

import os
import signal
import sys
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

_TIMEOUT = os.environ.get("FAULT_TRIAL_TIMEOUT_S")  # unset: the experiment's default
experiment = make_experiment("misbehaving", **({"trial_timeout_s": float(_TIMEOUT)} if _TIMEOUT else {}))
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)
HOW = os.environ.get("MISBEHAVE", "")
BAD = {int(x) for x in os.environ.get("MISBEHAVE_TRIALS", "").split(",") if x.strip()}


def misbehave(ctx, state):
    if HOW == "final=abc":
        return {"Q": "abc"}
    if HOW == "final=none":
        return {"Q": None}
    if HOW == "final=huge":
        return {"Q": 10**400}
    if HOW == "report=abc":
        ctx.report(ctx.start_step, Q="abc")
    if HOW == "return=none":
        return None
    if HOW == "return=list":
        return [q(state)]
    if HOW == "return=other":
        return {"loss": 1.0}
    if HOW == "exit0":
        sys.exit(0)
    if HOW == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if HOW == "hang":
        while True:
            time.sleep(3600)
    if HOW == "flood":
        for i in range(int(knob("MISBEHAVE_REPORTS", 60_000))):
            ctx.report(ctx.start_step + i, Q=q(state))
        return {"Q": q(state)}
    if HOW == "fat":
        return {"Q": q(state), **{f"extra_metric_{i:06d}": 0.5 for i in range(60_000)}}
    raise AssertionError(f"unknown MISBEHAVE={HOW!r}")


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()
    if ctx.trial_id in BAD:
        return misbehave(ctx, state)
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
