"""A command trial's program for the fault tests (``command_preemptible.py``): the toy of
``_common`` without pbt_actors. State: ``state.json`` (``theta``, ``steps``) in the checkpoint
directory; every step is traced like ``_common.Trace`` (``<trial> <attempt> <step>``)."""

import argparse
import json
import os
import signal
import time
from pathlib import Path

ALPHA = 0.02
STOP = {"requested": False}
signal.signal(signal.SIGTERM, lambda *_: STOP.update(requested=True))

parser = argparse.ArgumentParser()
parser.add_argument("--h0", type=float, required=True)
parser.add_argument("--h1", type=float, required=True)
args = parser.parse_args()
env = os.environ
trial, attempt = int(env["PBT_TRIAL_ID"]), int(env["PBT_ATTEMPT"])
start, end = int(env["PBT_START_STEP"]), int(env["PBT_END_STEP"])
parent = env.get("PBT_PARENT_DIR")
state = json.loads(Path(parent, "state.json").read_text()) if parent else {"theta": [0.9, 0.9], "steps": 0}
assert state["steps"] == start, (state["steps"], start)  # resumed exactly here
sleep_s = float(env.get("FAULT_STEP_SLEEP_S", "0"))
trace = None
if env.get("FAULT_TRACE_DIR"):
    os.makedirs(env["FAULT_TRACE_DIR"], exist_ok=True)
    trace = os.open(os.path.join(env["FAULT_TRACE_DIR"], f"{os.getpid()}.trace"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
step = start
while step < end and not STOP["requested"]:
    time.sleep(sleep_s)
    t0, t1 = state["theta"]
    state["theta"] = [t0 - ALPHA * 2 * args.h0 * t0, t1 - ALPHA * 2 * args.h1 * t1]
    state["steps"] += 1
    if trace is not None:
        os.write(trace, f"{trial} {attempt} {step}\n".encode())
    step += 1
    t0, t1 = state["theta"]
    print(f"pbt: step={step} Q={1.2 - (t0 * t0 + t1 * t1)!r}", flush=True)
Path(env["PBT_CHECKPOINT_DIR"], "state.json").write_text(json.dumps(state))
print(f"pbt: checkpoint step={step}", flush=True)
