"""examples/toy_quadratic.py with each step taking ``PBT_TEST_STEP_S`` seconds (default 0.04).

The real toy run ends in about a third of a second, before a browser has drawn the page; the
browser tests need a run that is still going while they watch it. The pause stands in for a
step's compute (it is not synchronisation: the test waits on the page, never on this clock).
"""

import importlib.util
import os
import time
from dataclasses import replace
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "toy_quadratic_example", Path(__file__).resolve().parents[3] / "examples" / "toy_quadratic.py")
assert _spec is not None and _spec.loader is not None
_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toy)

STEP_S = float(os.environ.get("PBT_TEST_STEP_S", "0.04"))
experiment = replace(_toy.experiment, name="paced_toy")


def train(ctx):
    result = None

    class _Paced:
        """``ctx`` whose ``report`` takes a step's time first."""

        def __getattr__(self, name):
            return getattr(ctx, name)

        def report(self, step, **metrics):
            time.sleep(STEP_S)
            return ctx.report(step, **metrics)

    result = _toy.train(_Paced())
    return result
