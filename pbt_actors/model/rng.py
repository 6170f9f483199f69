"""Per-decision random generators derived from ``(seed, trial id, decision kind)``.

Layer 1. There is no global or long-lived generator anywhere in the controller: a decision
about trial 17 draws from the same stream whether the controller has been up for a week or was
restarted a second ago, which is what makes restarts invisible in the trial graph.
"""

from __future__ import annotations

import zlib

import numpy as np


def decision_rng(seed: int, trial_id: int, kind: str) -> np.random.Generator:
    """A fresh generator for one decision; ``kind`` names it ("seed", "reproduce", ...)."""
    kind_code = zlib.crc32(kind.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, trial_id, kind_code])))
