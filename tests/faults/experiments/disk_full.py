"""A checkpoint disk that fills up and frees again. While the file ``DISK_FULL_FLAG`` exists,
``train`` lowers its own ``RLIMIT_FSIZE`` before saving (and keeps it while the flag exists), so
the kernel fails the checkpoint's ``write(2)`` part-way (EFBIG, standing in for ENOSPC: both are
a write that stops mid-file); once the flag is gone the limit is lifted again. Checkpoints carry
``DISK_FULL_PAD`` bytes of padding (default 64 KiB) so that they are larger than the limit."""

import os
import resource
import time

from _common import TRACE, advance, initial_state, knob, make_experiment, q

experiment = make_experiment("disk_full")
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)
FLAG = os.environ.get("DISK_FULL_FLAG", "")
PAD = int(os.environ.get("DISK_FULL_PAD", str(64 * 1024)))
LIMIT = 16 * 1024


def _disk_full(full: bool) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT if full else hard, hard))


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    # the limit stays while the flag does: the checkpoint is written in the background after
    # ``save_checkpoint`` returns (issue 24), so lifting it on return would let every write pass
    _disk_full(bool(FLAG) and os.path.exists(FLAG))
    ctx.save_checkpoint({**state, "pad": "x" * PAD})
    return {"Q": q(state)}
