"""Trial switch benchmark: the gap between one trial's ``train`` returning and the next trial's
first training step, next to the raw write/read/``torch.load`` of the same bytes (issue 24).

    python benchmarks/trial_switch.py [--sizes 10,100,1000] [--roots local,s3] [--trials 8]
                                      [--tree PATH] [--modes after,before] [--json]

A real controller (in this process, LMDB store, ZeroMQ on loopback) and one ``WorkerClient``
train a population of 2 with the ``random`` policy (no exploit: every child continues its own
lineage), one step per trial. A trial's state is a dict of float32 torch tensors of the given
size; "training" sleeps ``--train-s`` (default: 3 x the raw serialize + write time of the state, at
least 0.2 s), as a GPU-bound trial leaves the CPU idle. With two lineages on one worker, the
next trial is always the *other* lineage's, whose parent was trained by this worker one trial
earlier, while the trial just ended is being written:

* **(a) own lineage**: the parent is a state this worker trained (``keep_in_memory`` = 2):
  after, it is handed over in memory; before, it is read back and deserialized.
* **(b) parent from another worker**: the same, with nothing kept in memory and, on S3, no
  local cache (``PBT_ACTORS_CACHE_BYTES=0``): the parent is fetched, verified and deserialized
  as on another host.
* **(a1) population = workers = 1**: the lineage's next trial exists only once this trial's
  checkpoint is durable (a trial completes, and becomes a parent, only then), so the write is
  on the critical path whatever the mode; printed to show that bound.

Gap = next trial's first step (``ctx.load_checkpoint()`` returned) - the previous trial's last
training step (just before its ``ctx.save_checkpoint``: a synchronous save is idle accelerator
time too), median over the trials. **Modes**: ``after`` = this tree (background writes, states
kept in memory); ``before`` = the same tree with ``background_writes=False, keep_in_memory=0``
(the synchronous path as it was: save, report, then load from the store); with ``--tree PATH``
the ``before`` mode imports pbt_actors from another checkout instead (e.g. the main branch),
which is how the README's "before" figures were taken. **Raw** (same run, same bytes):
``torch.save`` to memory, then write + fsync to a file (local) or ``s3fs.pipe`` (S3); read the
file / ``s3fs.cat``; ``torch.load(weights_only=True)``; and, apart, ``hashlib.sha256`` of the bytes
(a child verifies size and sha256 before it parses anything, docs/design.md §8.6, so raw read +
sha256 + load is the floor of (b)); medians of 5 (1 at 1 GB). Background write throughput = bytes /
the write job's time (serialize, hash, write, fsync or upload, commit).

Goals (issue 24): (a) at most 5 ms at every size; (b) at most 1.1 x raw read + deserialize;
background writes at >= 80% of the raw write throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import inspect
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
MB = 10**6
BUCKET = "pbt-switch"


def _import_tree(tree: Path | None) -> None:
    """Put ``tree`` (or this checkout) first on ``sys.path`` before anything imports pbt_actors."""
    sys.path.insert(0, str(tree or REPO))
    if tree is not None:
        sys.path.insert(1, str(REPO))  # tests.support (the S3 server) from this checkout


@dataclass
class Raw:
    serialize_s: float
    write_s: float
    read_s: float
    load_s: float
    sha256_s: float
    bytes: int

    @property
    def write_mb_s(self) -> float:
        return self.bytes / MB / (self.serialize_s + self.write_s)

    @property
    def read_load_s(self) -> float:
        return self.read_s + self.load_s


@dataclass
class Case:
    root: str
    size_mb: int
    mode: str
    scenario: str
    gaps_ms: list[float] = field(default_factory=list)
    from_memory: int = 0
    write_mb_s: list[float] = field(default_factory=list)

    @property
    def gap_ms(self) -> float:
        return statistics.median(self.gaps_ms) if self.gaps_ms else float("nan")


def make_state(size_mb: int) -> dict[str, Any]:
    import torch

    n = size_mb * MB // 4 // 4
    return {f"layer{i}": torch.full((n,), float(i + 1)) for i in range(4)} | {"step": 0}


def raw_baseline(size_mb: int, root: str, work: Path, repeat: int = 5) -> Raw:
    """The median of ``repeat`` runs per phase (the gaps are medians too: on a loaded machine a
    best-of baseline would be a lucky one)."""
    runs = [_raw_once(size_mb, root, work) for _ in range(repeat)]
    return Raw(*(statistics.median(getattr(r, f) for r in runs)
                 for f in ("serialize_s", "write_s", "read_s", "load_s", "sha256_s")), runs[0].bytes)


def _raw_once(size_mb: int, root: str, work: Path) -> Raw:
    import torch

    state = make_state(size_mb)
    started = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    serialize_s = time.perf_counter() - started
    del buffer
    if root == "local":
        path = work / "raw.bin"
        started = time.perf_counter()
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        back = path.read_bytes()
        read_s = time.perf_counter() - started
        path.unlink()
    else:
        import s3fs

        fs = s3fs.S3FileSystem()
        key = f"{BUCKET}/raw-{size_mb}.bin"
        started = time.perf_counter()
        fs.pipe(key, data)
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        back = fs.cat(key)
        read_s = time.perf_counter() - started
        fs.rm(key)
    del data
    started = time.perf_counter()
    torch.load(io.BytesIO(back), map_location="cpu", weights_only=True)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    hashlib.sha256(back).hexdigest()
    sha256_s = time.perf_counter() - started
    return Raw(serialize_s, write_s, read_s, load_s, sha256_s, len(back))


def run_case(root_url: str, case: Case, *, population: int, trials: int, train_s: float, keep: int,
             background: bool) -> Case:
    """One run of ``trials`` trials; fills ``case`` with the gaps (see the module docstring)."""
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.space import Float
    from pbt_actors.runtime.controller.controller_actor import Controller
    from pbt_actors.runtime.worker.worker_client import WorkerClient

    experiment = Experiment(name="switch", space={"x": Float(0.0, 1.0)}, objective="score", population=population,
                            steps_per_trial=1, max_steps=10**6, max_trials=trials, lease_s=600, policy="random",
                            seed=1)
    events: list[tuple[str, float, bool, bool]] = []  # (what, when, has parent, from memory)

    def train(ctx):  # type: ignore[no-untyped-def]
        state = ctx.load_checkpoint()
        has_parent = state is not None
        events.append(("first_step", time.perf_counter(), has_parent, bool(getattr(ctx, "from_memory", False))))
        if state is None:
            state = make_state(case.size_mb)
        time.sleep(train_s)  # the accelerator's work: the CPU is free meanwhile
        state = {**state, "step": ctx.end_step}  # a new dict: the tensors are not changed in place
        events.append(("trained", time.perf_counter(), has_parent, False))  # the accelerator is idle from here
        ctx.save_checkpoint(state)
        return {"score": float(ctx.hparams["x"])}

    with tempfile.TemporaryDirectory(prefix="pbt-switch-") as tmp:
        handle = Controller.start(experiment, Path(tmp) / "store", "tcp://127.0.0.1:0")
        options = {"background_writes": background, "keep_in_memory": keep}
        accepted = inspect.signature(WorkerClient).parameters
        client = WorkerClient(handle.endpoint, train, root_url if root_url != "local" else tmp, worker_id="switch-0",
                              **{k: v for k, v in options.items() if k in accepted})
        jobs: list[Any] = []
        writer = getattr(client, "writer", None)
        if writer is not None:
            submit = writer.submit

            def recording(job):  # type: ignore[no-untyped-def]
                jobs.append(job)
                return submit(job)

            writer.submit = recording
        try:
            client.hello()
            client.run()
        finally:
            client.close()
            handle.stop()
    last_return = None
    for what, when, has_parent, memory in events:
        if what == "trained":
            last_return = when
        elif has_parent and last_return is not None:
            case.gaps_ms.append((when - last_return) * 1000)
            case.from_memory += memory
    case.write_mb_s = [job.ref.bytes / MB / job.seconds for job in jobs if job.ref is not None and job.seconds > 0]
    return case


def measure(args: argparse.Namespace) -> dict[str, Any]:
    roots = [r for r in args.roots.split(",") if r]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    out: dict[str, Any] = {"raw": {}, "cases": []}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pbt-switch-raw-")))
        if "s3" in roots:
            from tests.support.s3_server import pointed_at, running_s3_server

            server = stack.enter_context(running_s3_server())
            stack.enter_context(pointed_at(server))
            server.make_bucket(BUCKET)
        for root in roots:
            for size in sizes:
                raw = raw_baseline(size, root, work, 1 if size >= 1000 else 5)
                out["raw"][f"{root}/{size}"] = asdict(raw) | {"write_mb_s": raw.write_mb_s}
                train_s = args.train_s or max(0.2, 3 * (raw.serialize_s + raw.write_s))
                for mode in modes:
                    after = mode == "after"
                    for scenario, population, keep, no_cache in (("a", 2, 2, False), ("b", 2, 0, True),
                                                                  ("a1", 1, 2, False)):
                        if scenario == "a1" and not args.population_one:
                            continue
                        url = "local" if root == "local" else f"s3://{BUCKET}/{mode}-{scenario}-{size}"
                        env = {"PBT_ACTORS_CACHE_BYTES": "0"} if no_cache and root == "s3" else {}
                        with mock.patch.dict(os.environ, env):
                            case = run_case(url, Case(root, size, mode, scenario), population=population,
                                            trials=args.trials, train_s=train_s, keep=keep if after else 0,
                                            background=after)
                        out["cases"].append(asdict(case) | {"gap_ms": case.gap_ms})
                        _print_case(case, raw)
                        gc.collect()
    return out



def _print_case(case: Case, raw: Raw) -> None:
    rl = raw.read_load_s * 1000
    extra = ""
    if case.scenario == "b":
        rhl = rl + raw.sha256_s * 1000
        extra = (f"  = {case.gap_ms / rl:.2f}x raw read+load ({rl:.0f} ms), {case.gap_ms / rhl:.2f}x raw "
                 f"read+sha256+load ({rhl:.0f} ms)")
    elif case.scenario in ("a", "a1"):
        extra = f"  (raw read+load {rl:.0f} ms, raw serialize+write {(raw.serialize_s + raw.write_s) * 1000:.0f} ms)"
    bw = (f"  bg write {statistics.median(case.write_mb_s):.0f} MB/s = "
          f"{statistics.median(case.write_mb_s) / raw.write_mb_s:.0%} of raw {raw.write_mb_s:.0f} MB/s"
          if case.write_mb_s else "")
    print(f"{case.root:5} {case.size_mb:5} MB  {case.mode:6} ({case.scenario:2}) gap p50 {case.gap_ms:9.1f} ms "
          f"[{len(case.gaps_ms)} trials, {case.from_memory} from memory]{extra}{bw}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="state sizes in MB, comma-separated")
    parser.add_argument("--roots", default="local,s3", help="local and/or s3 (moto on loopback)")
    parser.add_argument("--modes", default="after,before", help="after (this tree) and/or before")
    parser.add_argument("--tree", type=Path, default=None,
                        help="import pbt_actors from this checkout (run it once per tree for before/after)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train-s", type=float, default=0.0, help="seconds per trial (default: from raw write)")
    parser.add_argument("--population-one", action="store_true", help="also run (a1): population = workers = 1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _import_tree(args.tree)
    import pbt_actors

    print(f"pbt_actors from {Path(pbt_actors.__file__).parent}; {os.cpu_count()} CPUs (loaded machine: "
          "compare figures of one run only)", flush=True)
    result = measure(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
