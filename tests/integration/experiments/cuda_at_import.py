"""``toy_lineage`` behind an experiment file that "initialises CUDA at import".

This machine has no GPU, so the one fact that cannot be produced for real is simulated:
``torch.cuda.is_initialized()`` answers True in every process that imports this file, as it
would after ``torch.cuda.init()`` at import. ``pbt-actors run`` must then refuse to fork a
zygote, warn once (why, and how to avoid it) and start fresh worker interpreters
(tests/unit/test_zygote_cuda.py; ``benchmarks/gpu_check.py`` runs the real thing on a GPU).
"""

import torch

torch.cuda.is_initialized = lambda: True  # the simulated fact (see the module doc)

from toy_lineage import experiment, train  # noqa: E402

__all__ = ["experiment", "train"]
