"""Simulator throughput: trials per second at 10k, 100k and 1M trials (population 100).

Why: the simulator drives the real ``ControllerCore`` and policies, so its speed is the
controller's decision cost plus a little event bookkeeping. Two promises are checked:

* 100,000 trials (population 100, memory store) take at most 60 s on a 2-core machine;
* the cost per trial is flat from 10k to 1M trials: no decision scans the whole history.
  Besides the overall rate of each size, the rate of each tenth of the run is printed; a
  decision that scanned the history would show as a falling rate from the first tenth to
  the last.

Wall time is what the 60 s promise is about, but on a shared machine it mostly measures the
neighbours; CPU time (``time.process_time``) per trial is the steadier number for the flatness
check, and the load average before and after each size is printed so a reader can tell.

Setup: Jaderberg's toy objective with an unreachable ``max_steps`` (lineages never end), the
initiator policy (window 2), ``population`` workers with speed spread 0.2, heartbeats on, no
preemption; ``max_trials`` stops the run at the size. Each size runs in a fresh process.

    python benchmarks/sim_speed.py [--sizes 10000,100000,1000000] [--population 100] [--workers 100]
                             [--policy initiator] [--store memory|lmdb] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_100K_S = 60.0


def one(size: int, population: int, workers: int, policy: str, store_kind: str) -> dict[str, object]:
    from pbt_actors.tools.sim import SimConfig, ToyQuadratic, simulate

    marks: list[tuple[float, float]] = []
    chunk = max(1, size // 10)
    store = None
    tmp = None
    if store_kind == "lmdb":
        from pbt_actors.storage.lmdb_store import LmdbTrialStore

        tmp = tempfile.TemporaryDirectory(prefix="pbt-sim-bench-")
        store = LmdbTrialStore(Path(tmp.name) / "store", sync=False)
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result, _ = simulate(ToyQuadratic(max_steps=1 << 40), policy=policy, population=population, seed=0,
                             config=SimConfig(workers=workers, speed_spread=0.2), store=store,
                             max_trials=size, progress_every=chunk,
                             on_progress=lambda _n: marks.append((time.perf_counter(), time.process_time())))
    finally:
        if store is not None:
            store.close()
        if tmp is not None:
            tmp.cleanup()
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    edges = [(started, cpu_started), *marks]
    tenths = [round(chunk / (b[0] - a[0])) for a, b in itertools.pairwise(edges)]
    cpu_tenths = [round(chunk / max(1e-9, b[1] - a[1])) for a, b in itertools.pairwise(edges)]
    return {
        "trials": result.trials, "population": population, "workers": workers, "policy": policy,
        "store": store_kind, "wall_s": round(total, 2), "trials_per_s": round(result.trials / total),
        "cpu_s": round(cpu, 2), "trials_per_cpu_s": round(result.trials / cpu),
        "tenths_trials_per_s": tenths, "tenths_trials_per_cpu_s": cpu_tenths,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "events": result.events, "finished": result.finished,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="default: the population")
    parser.add_argument("--policy", default="initiator", choices=["initiator", "truncation", "random"])
    parser.add_argument("--store", default="memory", choices=["memory", "lmdb"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workers = args.workers or args.population
    if args.one is not None:
        print(json.dumps(one(args.one, args.population, workers, args.policy, args.store)))
        return 0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--one", str(size), "--population", str(args.population),
               "--workers", str(workers), "--policy", args.policy, "--store", args.store]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        if not args.json:
            cpu_tenths = row["tenths_trials_per_cpu_s"]
            print(f"{row['trials']:>9,} trials  {row['wall_s']:>7.1f} s wall  {row['trials_per_s']:>6,} trials/s  "
                  f"| {row['cpu_s']:>7.1f} s CPU  {row['trials_per_cpu_s']:>6,} trials/CPU-s  "
                  f"(tenths, trials/CPU-s: {' '.join(str(t) for t in cpu_tenths)})  "
                  f"{row['events']:,} events, max RSS {row['max_rss_mb']:,} MB, "
                  f"load {row['load_before']}->{row['load_after']}", flush=True)
    verdicts = []
    for row in rows:
        if row["trials"] == 100_000:
            verdicts.append(f"100k trials in {row['wall_s']:.1f} s (target <= {TARGET_100K_S:.0f} s): "
                            + ("ok" if row["wall_s"] <= TARGET_100K_S else "MISSED"))
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        verdicts.append(f"CPU cost per trial {first['trials']:,} -> {last['trials']:,}: "
                        f"{1e6 / first['trials_per_cpu_s']:.0f} -> {1e6 / last['trials_per_cpu_s']:.0f} us "
                        f"(x{first['trials_per_cpu_s'] / last['trials_per_cpu_s']:.2f}); within the largest run, "
                        f"first tenth {last['tenths_trials_per_cpu_s'][0]:,} vs last tenth "
                        f"{last['tenths_trials_per_cpu_s'][-1]:,} trials/CPU-s")
    if args.json:
        print(json.dumps({"rows": rows, "verdicts": verdicts}))
    else:
        for verdict in verdicts:
            print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
