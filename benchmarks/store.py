"""Trial-store throughput against a raw py-lmdb baseline, in one run.

Why: the controller commits one batch per burst of messages, so its ceiling is the store's
transitions per second, and the question is how much our layer (msgpack records, strict
decoding, derived indexes, compare-and-set) costs over LMDB itself. Measured:

(a) raw py-lmdb puts of ~300-byte values: one put per fsync'd transaction, ``--batch`` puts per
    transaction, and all ``--n`` puts in one transaction;
(b) ``LmdbTrialStore`` transitions (PENDING->RUNNING->COMPLETED, each a read plus a
    compare-and-set): one per transaction, and ``--batch`` per ``batch()``;
(c) ``InMemoryTrialStore`` transitions (the same work without a disk).

Per-transaction cases are fsync-bound, so they run for at most ``--budget`` seconds each; the
whole script stays well under a minute on a 2-core machine at the default ``--n``.

    python benchmarks/store.py [--n 20000] [--batch 64] [--budget 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmdb

from pbt_actors.model.records import Origin, OriginKind, TrialSpec, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TrialStore

VALUE_BYTES = 300


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    baseline: str | None = None  # the raw case this row is compared with

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


def timed(name: str, limit: int, budget: float | None,
          step: Callable[[int], int], baseline: str | None = None) -> Result:
    """Call ``step(i)`` (which returns the ops it did) until ``limit`` ops or ``budget`` s."""
    done = 0
    start = time.perf_counter()
    while done < limit:
        done += step(done)
        if budget is not None and time.perf_counter() - start >= budget:
            break
    return Result(name, done, time.perf_counter() - start, baseline)


def spec(i: int) -> TrialSpec:
    return TrialSpec(generation=i % 8, hparams={"lr": 0.001 * (1 + i % 97), "batch": 64,
                                                "optimizer": "adam", "dropout": 0.1},
                     start_step=0, end_step=1000, origin=Origin(OriginKind.SEED))


# --- (a) raw py-lmdb ----------------------------------------------------------------------------
def bench_raw(root: Path, n: int, batch: int, budget: float) -> list[Result]:
    env = lmdb.open(str(root / "raw"), map_size=1 << 30, max_dbs=2, sync=True)
    db = env.open_db(b"bench")
    value = os.urandom(VALUE_BYTES)
    results = []
    try:
        def each(i: int) -> int:
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), value, db=db)
            return 1

        results.append(timed("raw lmdb: 1 put / txn", n, budget, each))

        def batched(i: int) -> int:
            k = min(batch, n - i)
            with env.begin(write=True) as txn:
                for j in range(i, i + k):
                    txn.put((n + j).to_bytes(8, "big"), value, db=db)
            return k

        results.append(timed(f"raw lmdb: {batch} puts / txn", n, None, batched))

        def one(_: int) -> int:
            with env.begin(write=True) as txn:
                for j in range(n):
                    txn.put((2 * n + j).to_bytes(8, "big"), value, db=db)
            return n

        results.append(timed(f"raw lmdb: {n} puts in 1 txn", n, None, one))
    finally:
        env.close()
    return results


# --- (b, c) trial stores --------------------------------------------------------------------------
def advance(store: TrialStore, trial_id: int, now: float) -> None:
    """PENDING -> RUNNING -> COMPLETED: two compare-and-set transitions."""
    t = store.get_trial(trial_id)
    running = t.evolve(status=TrialStatus.RUNNING, worker="w1", started_at=now)
    assert store.transition(trial_id, TrialStatus.PENDING, t.attempt, running)
    done = running.evolve(status=TrialStatus.COMPLETED, final={"acc": 0.5}, ended_at=now,
                          completed_attempt=t.attempt)
    assert store.transition(trial_id, TrialStatus.RUNNING, t.attempt, done)


def bench_store(label: str, store: TrialStore, n: int, batch: int, budget: float | None,
                raw_each: str, raw_batch: str) -> list[Result]:
    results = []

    def create(i: int) -> int:
        k = min(1024, n - i)
        with store.batch():
            for j in range(i, i + k):
                store.create_trial(spec(j), 0.0)
        return k

    results.append(timed(f"{label}: create, 1024 / batch", n, None, create))
    half = n // 2
    # Each step advances one trial: 2 transitions, as a pair of separate commits.
    each = timed(f"{label}: transition, 1 / txn", 2 * half, budget,
                 lambda i: (advance(store, 1 + i // 2, 1.0), 2)[1], raw_each)
    results.append(each)
    first = half + 1
    pairs = max(1, batch // 2)

    def batched(i: int) -> int:
        lo = first + i // 2
        hi = min(lo + pairs, n + 1)
        with store.batch():
            for trial_id in range(lo, hi):
                advance(store, trial_id, 2.0)
        return 2 * (hi - lo)

    results.append(timed(f"{label}: transition, {2 * pairs} / batch", 2 * (n - half), None,
                         batched, raw_batch))
    assert store.count(TrialStatus.COMPLETED) == each.ops // 2 + (n - half)
    return results


def run(n: int, batch: int, budget: float) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="pbt-store-bench-") as tmp:
        root = Path(tmp)
        results = bench_raw(root, n, batch, budget)
        raw_each, raw_batch = results[0].name, results[1].name
        with LmdbTrialStore(root / "store", sync=True) as store:
            results += bench_store("LmdbTrialStore", store, n, batch, budget,
                                   raw_each, raw_batch)
        with InMemoryTrialStore() as memory:
            results += bench_store("InMemoryTrialStore", memory, n, batch, None,
                                   raw_each, raw_batch)
    return results


def table(results: list[Result]) -> str:
    rates = {r.name: r.rate for r in results}
    lines = [f"{'case':44} {'ops':>8} {'seconds':>8} {'ops/s':>11} {'us/op':>9}  vs raw",
             "-" * 96]
    for r in results:
        ratio = f"{r.rate / rates[r.baseline]:7.2f}x  ({r.baseline})" if r.baseline else ""
        lines.append(f"{r.name:44} {r.ops:8d} {r.seconds:8.2f} {r.rate:11.0f} "
                     f"{1e6 / r.rate:9.1f}  {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="trials / puts per case")
    parser.add_argument("--batch", type=int, default=64, help="ops per batched transaction")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds cap for each one-op-per-fsync case")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.n < 2 or args.batch < 2:
        parser.error("--n and --batch must be at least 2")
    started = time.perf_counter()
    results = run(args.n, args.batch, args.budget)
    if args.json:
        rates = {r.name: r.rate for r in results}
        print(json.dumps({
            "n": args.n, "batch": args.batch, "value_bytes": VALUE_BYTES,
            "results": [{**asdict(r), "ops_per_s": r.rate,
                         "vs_raw": r.rate / rates[r.baseline] if r.baseline else None}
                        for r in results],
            "total_seconds": time.perf_counter() - started,
        }, indent=2))
    else:
        print(table(results))
        print(f"\ntotal {time.perf_counter() - started:.1f}s; LMDB cases fsync every commit "
              f"(sync=True); values ~{VALUE_BYTES} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
