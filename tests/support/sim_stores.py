"""Finished LMDB stores made fast by the simulator, for the tests of the faces (exports, reports)."""

from __future__ import annotations

from pathlib import Path

from tests.support.runs import cli


def sim_store(root: Path, trials: int, *extra: str) -> Path:
    """A finished LMDB store of ``trials`` trials from ``pbt-actors sim`` (the curve objective,
    a population of 16; under a second for 300 trials), made under ``root``; ``extra`` are
    more ``sim`` flags (``--preempt-rate 30`` for retried attempts)."""
    proc = cli("sim", "--objective", "curve", "--population", "16", "--seeds", "1", "--max-trials", str(trials),
               "--store", "lmdb", "--store-dir", str(root), "--quiet", *extra)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    (store,) = [p for p in root.iterdir() if (p / "data.mdb").exists()]
    return store
