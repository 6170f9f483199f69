"""A worker that reports on itself instead of working (tests/integration/test_zygote.py).

Imported by a ``worker-process`` (forked by the zygote or not), its module code prints one
``PROBE {json}`` line (environment, pid, argv, whether ``json.tool`` was preloaded), then
``PROBE_MODE=exit`` exits with ``PROBE_CODE``; ``PROBE_MODE=wait`` prints ``PROBE ready`` and
waits for a signal (with ``PROBE_ON_TERM=N`` a SIGTERM makes it exit with code N).
"""

import json
import os
import signal
import sys

from pbt_actors import Experiment, Float

experiment = Experiment(name="zygote_probe", space={"x": Float(0.0, 1.0)}, objective="Q", population=2,
                        steps_per_trial=1, max_steps=1)


def train(ctx):
    return {"Q": 0.0}


if "worker-process" in sys.argv:
    print("PROBE " + json.dumps({"env": dict(os.environ), "pid": os.getpid(), "argv": sys.argv[1:],
                                 "preloaded": "json.tool" in sys.modules}), flush=True)
    if os.environ.get("PROBE_MODE", "exit") == "exit":
        sys.exit(int(os.environ.get("PROBE_CODE", "0")))
    if os.environ.get("PROBE_ON_TERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(int(os.environ["PROBE_ON_TERM"])))
    print("PROBE ready", flush=True)
    while True:
        signal.pause()
