"""The toy problem for the object-storage tests (``tests/integration/test_object_storage.py``).

``OBJ_PAD_TRIAL=<id>`` and ``OBJ_PAD_MB=<n>``: the first attempt of that trial saves an extra
``n`` MB in its checkpoint, so that its upload (multipart, ``PBT_ACTORS_UPLOAD_PART_BYTES``)
lasts long enough for a test to SIGKILL the worker in the middle of it. Every checkpoint
records its parent's sha256, so the test can prove each child started from its parent.
"""

import os
import time

from pbt_actors import Experiment, Float, Retention

experiment = Experiment(
    name="object_store_toy",
    space={"h0": Float(0.0, 1.0), "h1": Float(0.0, 1.0)},
    objective="Q",
    population=4,
    steps_per_trial=5,
    max_steps=int(os.environ.get("OBJ_MAX_STEPS", "30")),
    initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}],
    crossover_prob=0.5,
    lease_s=30,
    heartbeat_s=0.2,
    seed=0,
    retention=Retention(enabled=False),  # the tests audit every checkpoint file after the run
)

PAD_TRIAL = int(os.environ.get("OBJ_PAD_TRIAL", "0"))
PAD_BYTES = int(float(os.environ.get("OBJ_PAD_MB", "0")) * 2**20)
STEP_SLEEP_S = float(os.environ.get("OBJ_STEP_SLEEP_S", "0"))


def train(ctx):
    state = ctx.load_checkpoint() or {"theta": [0.9, 0.9]}
    t0, t1 = state["theta"]
    h0, h1 = float(ctx.hparams["h0"]), float(ctx.hparams["h1"])
    for step in range(ctx.start_step, ctx.end_step):
        if STEP_SLEEP_S:
            time.sleep(STEP_SLEEP_S)
        t0, t1 = t0 - 0.02 * 2 * h0 * t0, t1 - 0.02 * 2 * h1 * t1
        if not ctx.report(step + 1, Q=1.2 - (t0 * t0 + t1 * t1)):
            break
    parent = ctx.parent_checkpoint
    saved = {"theta": [t0, t1], "trial": ctx.trial_id, "parent_sha256": parent.sha256 if parent else None}
    if ctx.trial_id == PAD_TRIAL and ctx.attempt == 1:
        saved["pad"] = b"\x01" * PAD_BYTES
    ctx.save_checkpoint(saved)
    return {"Q": 1.2 - (t0 * t0 + t1 * t1)}
