"""Damaged checkpoints. Trial ``CORRUPT_TRIAL`` (default 1) reports a huge Q, so it wins every
tournament it is in and children warm-start from it; right after saving, its checkpoint is
damaged per ``CORRUPT_MODE``: ``truncate`` (half the bytes), ``sha`` (same size, one byte
flipped) or ``delete``. Its children must fail with a clear ``CheckpointError`` and the
policy must give their slots another parent."""

import os
import time
from pathlib import Path

from _common import TRACE, advance, initial_state, knob, make_experiment, q

experiment = make_experiment("corrupt")
STEP_SLEEP_S = knob("FAULT_STEP_SLEEP_S", 0)
CORRUPT_TRIAL = int(os.environ.get("CORRUPT_TRIAL", "1"))
CORRUPT_MODE = os.environ.get("CORRUPT_MODE", "truncate")


def _damage(path: Path) -> None:
    data = path.read_bytes()
    if CORRUPT_MODE == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif CORRUPT_MODE == "sha":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif CORRUPT_MODE == "delete":
        path.unlink()
    else:
        raise ValueError(f"unknown CORRUPT_MODE {CORRUPT_MODE!r}")


def train(ctx):
    state = ctx.load_checkpoint() or initial_state()  # verifies size and sha256 first
    for step in range(ctx.start_step, ctx.end_step):
        time.sleep(STEP_SLEEP_S)
        advance(state, ctx.hparams)
        TRACE.step(ctx, step)
        ctx.report(step + 1, Q=q(state))
    ref = ctx.save_checkpoint(state, background=False)  # the reference now, to damage its file
    if ctx.trial_id == CORRUPT_TRIAL:
        _damage(Path(ctx.checkpoint_root) / ref.uri)
        return {"Q": 100.0}
    return {"Q": q(state)}
