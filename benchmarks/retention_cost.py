"""Disk held by checkpoints over a long run, retention on against retention off, in one run.

Why: without retention every trial's checkpoint stays, so disk grows with the number of
trials; with it (``Experiment(retention=Retention())``, the default) the folder should stay
flat at about population x (opponent window + 1) checkpoints plus ``keep_best``, whatever the
run's length. Measured on ``examples/toy_quadratic.py`` (made longer and wider here) through
the real ``pbt-actors run`` (controller with its collector thread, worker processes, LMDB,
files): a sampler thread counts the ``*.ckpt`` files and their bytes every ``--sample-ms``
while the run goes, for each setting. Reported: trials, peak and final files and bytes, the
formula's bound ``keep_best + P * (W + 1)`` (lineages advancing together; the live peak may
exceed it by the files written since the collector's last pass), and the growth of the
retention-off folder for comparison. (A separate file from the transfer benchmark
``benchmarks/checkpoint_io.py``, which another change adds; this one needs no object store.)

    python benchmarks/retention_cost.py [--population 8] [--max-steps 400] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_quadratic.py"


@dataclass
class DiskRun:
    retention: bool
    trials: int
    wall_s: float
    samples: int
    peak_files: int
    peak_bytes: int
    final_files: int
    final_bytes: int
    bound: int


def _held(root: Path) -> tuple[int, int]:
    count = size = 0
    for path in root.rglob("*.ckpt"):
        try:
            size += path.stat().st_size
        except FileNotFoundError:  # collected while we looked
            continue
        count += 1
    return count, size


def _experiment_file(folder: Path, retention: bool, population: int, max_steps: int) -> Path:
    path = folder / f"toy_{'on' if retention else 'off'}.py"
    path.write_text(
        f"exec(open({str(TOY)!r}).read())\n"
        "from dataclasses import replace\n"
        "from pbt_actors import Retention\n"
        f"experiment = replace(experiment, name='toy_disk_{'on' if retention else 'off'}', "
        f"population={population}, max_steps={max_steps}, initial=(), "
        f"retention=Retention(enabled={retention}))\n")
    return path


def measure(retention: bool, population: int, max_steps: int, workers: int, sample_s: float) -> DiskRun:
    with tempfile.TemporaryDirectory(prefix="pbt-retention-bench-") as tmp:
        folder = Path(tmp)
        exp = _experiment_file(folder, retention, population, max_steps)
        store = folder / "store"
        root = store / "checkpoints"
        peak = [0, 0]
        samples = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                files, size = _held(root) if root.exists() else (0, 0)
                peak[0], peak[1] = max(peak[0], files), max(peak[1], size)
                samples[0] += 1
                done.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        began = time.perf_counter()
        sampler.start()
        proc = subprocess.Popen([sys.executable, "-m", "pbt_actors.cli", "run", str(exp), "--workers", str(workers),
                                 "--devices", "cpu", "--store", str(store), "--json"], cwd=str(REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            done.set()
            sampler.join()
        wall = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}): {out[-2000:]}")
        summary = json.loads(out.strip().splitlines()[-1])
        final_files, final_bytes = _held(root)
        from pbt_actors.model.experiment import Retention

        window = 2  # the toy's opponent_window (Experiment's default)
        bound = Retention().keep_best + population * (window + 1)
        return DiskRun(retention, summary["trials"], round(wall, 2), samples[0], peak[0], peak[1],
                       final_files, final_bytes, bound)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=400, help="steps per lineage (5 per trial)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs = [measure(flag, args.population, args.max_steps, args.workers, args.sample_ms / 1000)
            for flag in (True, False)]
    if args.json:
        print(json.dumps([asdict(r) for r in runs]))
        return 0
    print(f"toy_quadratic, population {args.population}, {args.max_steps} steps per lineage, {args.workers} workers")
    print(f"{'retention':>9} {'trials':>6} {'peak files':>10} {'peak KB':>8} {'final files':>11} {'final KB':>8} "
          f"{'bound':>5} {'wall s':>6}")
    for r in runs:
        print(f"{'on' if r.retention else 'off':>9} {r.trials:>6} {r.peak_files:>10} {r.peak_bytes / 1024:>8.1f} "
              f"{r.final_files:>11} {r.final_bytes / 1024:>8.1f} {r.bound:>5} {r.wall_s:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
