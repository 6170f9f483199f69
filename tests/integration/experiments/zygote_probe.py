"""A worker that reports on itself instead of working (tests/integration/test_zygote.py,
benchmarks/runtime.py).

Imported by a worker process (forked by the zygote or a fresh interpreter), its module code
prints one ``PROBE {json}`` line: ``t`` (``time.monotonic()`` at its first line, comparable
across processes), environment, pid, argv, and which of ``PROBE_MODULES`` were imported
before it ran; then ``PROBE_MODE=exit`` exits with ``PROBE_CODE``; ``PROBE_MODE=wait`` prints
``PROBE ready`` and waits for a signal (with ``PROBE_ON_TERM=N`` a SIGTERM exits with code N), by ``os._exit``.
"""

import time

T_FIRST_LINE = time.monotonic()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from pbt_actors import Experiment, Float  # noqa: E402

PROBE_MODULES = ("json.tool", "torch", "torch._dynamo", "pbt_actors.runtime.worker.worker_client")

experiment = Experiment(name="zygote_probe", space={"x": Float(0.0, 1.0)}, objective="Q", population=2,
                        steps_per_trial=1, max_steps=1)


def train(ctx):
    return {"Q": 0.0}


if "worker-process" in sys.argv:
    print("PROBE " + json.dumps({"t": T_FIRST_LINE, "env": dict(os.environ), "pid": os.getpid(), "argv": sys.argv[1:],
                                 "modules": {m: m in sys.modules for m in PROBE_MODULES}}), flush=True)
    # os._exit, not sys.exit: an experiment file calling sys.exit at import is refused as a
    # configuration error (exit 2); the probe wants its own code to come back through the zygote
    if os.environ.get("PROBE_MODE", "exit") == "exit":
        os._exit(int(os.environ.get("PROBE_CODE", "0")))
    if os.environ.get("PROBE_ON_TERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(int(os.environ["PROBE_ON_TERM"])))
    print("PROBE ready", flush=True)
    while True:
        signal.pause()
