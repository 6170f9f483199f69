"""An experiment whose ``initial`` holds a value outside its space while ``BAD_INITIAL=1``
(h0 = 5.0, the space says [0, 1]); without it, the corrected definition. Quick to finish."""

import os

from _common import advance, initial_state, make_experiment, q

BAD = os.environ.get("BAD_INITIAL") == "1"
experiment = make_experiment("bad_initial", population=2, max_steps=10,
                             initial=[{"h0": 5.0 if BAD else 0.5, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}])


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        advance(state, ctx.hparams)
        ctx.report(step + 1, Q=q(state))
    ctx.save_checkpoint(state)
    return {"Q": q(state)}
