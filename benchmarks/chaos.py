"""Chaos benchmark: run an experiment while SIGKILLing worker processes at a fixed rate, and
measure the compute redone against the unavoidable minimum.

    python benchmarks/chaos.py                                  # examples/digits.py
    python benchmarks/chaos.py --experiment examples/toy_quadratic.py --workers 3 --kill-every 3

A SIGKILLed worker loses the steps its current trial had done since the trial's start (the
last checkpoint): that is the **minimum** a kill can cost, "the steps in flight". Anything
redone beyond it is overhead of the system (a trial re-run although its result had been
delivered, two attempts of one trial racing after a lease expired, ...). The benchmark prints

* ``useful``: steps of the attempts that completed their trials (the work the result needs);
* ``executed``: every step any worker ran; ``redone = executed - useful``;
* ``minimum``: the sum, over the kills, of the steps the victim's trial attempt had done
  (zero when the victim was between trials or its report had already been accepted);
* ``ratio = redone / minimum`` (1.0: nothing redone beyond what the kills destroyed).

How steps are counted, whatever the experiment: this file is also the experiment that
``pbt-actors run`` is given. Loaded by a worker (``PBT_CHAOS_TARGET`` set), it imports the real
experiment file and wraps its ``train`` so that every ``ctx.report(step, ...)`` first appends
``"<trial> <attempt> <start_step> <step>"`` to ``<trace dir>/<pid>.trace`` with one
``write(2)`` (which a SIGKILL right after cannot undo). Steps are therefore counted at the
experiment's reporting granularity (the toy and digits report every step).

Kills are spread over the workers (the least-killed live one, ties broken at random), so that
no slot exceeds the host supervisor's restart intensity (5 restarts within 60 s, after which it
gives the slot up): with ``W`` workers ``--kill-every`` must exceed ``12 / W`` seconds (the
benchmark refuses faster rates unless ``--force``). Each restart also waits the supervisor's
backoff (0.2 s doubling up to 10 s, reset after 30 s of uptime): idle time, not redone work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_ENV = "PBT_CHAOS_TARGET"
TRACE_ENV = "PBT_CHAOS_TRACE"

# --- the experiment side: loaded by `pbt-actors run` and its worker processes ------------------
if os.environ.get(TARGET_ENV):
    from pbt_actors.runtime.host.launch import load_experiment_file

    experiment, _target_train = load_experiment_file(os.environ[TARGET_ENV])
    _trace_fd: int | None = None

    def train(ctx: Any) -> Any:
        global _trace_fd  # noqa: PLW0603 - one append-only file per worker process
        if _trace_fd is None:
            folder = Path(os.environ[TRACE_ENV])
            folder.mkdir(parents=True, exist_ok=True)
            _trace_fd = os.open(folder / f"{os.getpid()}.trace", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fd, report = _trace_fd, ctx.report

        def counted_report(step: int, **metrics: float) -> bool:
            os.write(fd, f"{ctx.trial_id} {ctx.attempt} {ctx.start_step} {int(step)}\n".encode())
            return bool(report(step, **metrics))

        ctx.report = counted_report
        return _target_train(ctx)


# --- the benchmark side ---------------------------------------------------------------------------
def worker_pids(checkpoint_root: Path) -> dict[str, int]:
    """Live worker processes of this run: ``worker id -> pid``, from the host state file the
    supervisor publishes under the checkpoint root (what ``pbt-actors status`` reads)."""
    from pbt_actors.runtime.host.host_state import read_host_states

    out: dict[str, int] = {}
    for child in (c for state in read_host_states(checkpoint_root) for c in state["children"]):
        if child.get("state") != "running" or child.get("pid") is None:
            continue
        try:
            os.kill(int(child["pid"]), 0)
            if (Path("/proc") / str(child["pid"]) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (ProcessLookupError, FileNotFoundError):
            continue
        out[str(child["id"])] = int(child["pid"])
    return out


def read_traces(folder: Path) -> tuple[dict[tuple[int, int], int], dict[int, tuple[int, int] | None]]:
    """``(trial, attempt) -> steps executed`` and ``pid -> its last (trial, attempt)``."""
    done: dict[tuple[int, int], int] = {}
    last: dict[int, tuple[int, int] | None] = {}
    for path in sorted(folder.glob("*.trace")) if folder.is_dir() else []:
        last[int(path.stem)] = None
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut by the kill itself
            trial, attempt, start, step = map(int, parts)
            done[(trial, attempt)] = max(done.get((trial, attempt), 0), step - start)
            last[int(path.stem)] = (trial, attempt)
    return done, last


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pbt_actors.model.records import TrialStatus
    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from pbt_actors.tools.verify import verify_store

    experiment_file = Path(args.experiment).resolve()
    if not experiment_file.is_file():
        raise SystemExit(f"chaos: no experiment file {experiment_file} (give --experiment PATH)")
    store = Path(args.store or tempfile.mkdtemp(prefix="pbt-chaos-")).resolve()
    store.mkdir(parents=True, exist_ok=True)
    ckpt, traces = store / "checkpoints", store / "chaos-trace"
    env = {**os.environ, TARGET_ENV: str(experiment_file), TRACE_ENV: str(traces), "PYTHONUNBUFFERED": "1"}
    rng = random.Random(args.seed)
    argv = [sys.executable, "-m", "pbt_actors.cli", "run", str(Path(__file__).resolve()), "--workers",
            str(args.workers), "--devices", "cpu", "--store", str(store), "--json", "--quiet"]
    started = time.monotonic()
    with open(store / "chaos-run.log", "w") as log_file:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    kills: list[tuple[float, str, int]] = []
    per_worker: Counter[str] = Counter()
    next_kill = time.monotonic() + args.warmup

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # so that `finally` takes the run down with us

    signal.signal(signal.SIGTERM, on_term)
    try:
        while proc.poll() is None:
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"chaos: the run did not finish within {args.timeout:g}s (store {store})")
            if time.monotonic() < next_kill or (args.kills is not None and len(kills) >= args.kills):
                time.sleep(0.05)
                continue
            next_kill += args.kill_every
            alive = worker_pids(ckpt)
            if not alive:
                continue
            fewest = min(per_worker[w] for w in alive)
            victim = rng.choice(sorted(w for w in alive if per_worker[w] == fewest))
            try:
                os.kill(alive[victim], signal.SIGKILL)
            except ProcessLookupError:
                continue  # it just exited by itself
            kills.append((time.monotonic() - started, victim, alive[victim]))
            per_worker[victim] += 1
            if not args.json:
                print(f"[{kills[-1][0]:7.1f}s] kill #{len(kills)}: {victim} (pid {alive[victim]})", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - started

    done, last = read_traces(traces)
    with LmdbTrialStore(store, readonly=True) as s:
        everything = list(s.iter_trials())
        report = verify_store(s, ckpt, finished=True)
    completed = {(t.id, t.completed_attempt) for t in everything if t.status is TrialStatus.COMPLETED}
    useful = sum(done.get(key, 0) for key in completed)
    executed = sum(done.values())
    in_flight = []
    for _, _, pid in kills:
        attempt = last.get(pid)
        in_flight.append(0 if attempt is None or attempt in completed else done.get(attempt, 0))
    minimum = sum(in_flight)
    redone = executed - useful
    return {
        "experiment": str(experiment_file), "store": str(store), "workers": args.workers,
        "kill_every_s": args.kill_every, "kills": len(kills), "wall_time_s": round(wall, 1),
        "exit_code": proc.returncode, "trials": len(everything),
        "by_status": dict(Counter(t.status.value for t in everything)),
        "steps": {"useful": useful, "executed": executed, "redone": redone, "minimum": minimum,
                  "in_flight_at_kills": in_flight},
        "ratio": round(redone / minimum, 3) if minimum else None,
        "overhead": round(redone / useful, 4) if useful else None,
        "verify": {"ok": report.ok, "problems": report.problems[:20]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=str(REPO / "examples" / "digits.py"),
                        help="experiment file (default examples/digits.py)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between kills (a fixed rate)")
    parser.add_argument("--kills", type=int, default=None, help="stop killing after this many (default: never)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the first kill")
    parser.add_argument("--store", default=None, help="store folder (default: a fresh temp folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the victim choice")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--force", action="store_true", help="allow a kill rate past the restart intensity")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.kill_every <= 0:
        parser.error("--workers must be >= 1 and --kill-every > 0")
    if args.kill_every * args.workers <= 12 and not args.force:
        parser.error(f"one kill every {args.kill_every:g}s over {args.workers} workers is 5 or more restarts a "
                     f"minute per worker: the supervisor would give slots up (use --kill-every above "
                     f"{12 / args.workers:g}, more --workers, or --force)")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        steps = result["steps"]
        print(f"\n{Path(result['experiment']).name}: {result['trials']} trials, {result['kills']} kills "
              f"(one every {args.kill_every:g}s over {args.workers} workers), {result['wall_time_s']}s")
        print(f"steps useful {steps['useful']}  executed {steps['executed']}  redone {steps['redone']}  "
              f"minimum (in flight at the kills) {steps['minimum']}")
        ratio = "n/a (nothing was in flight)" if result["ratio"] is None else f"{result['ratio']:.3f}"
        print(f"redone / minimum = {ratio}   overhead redone / useful = {result['overhead']}")
        print("trials by status: " + "  ".join(f"{k} {v}" for k, v in sorted(result["by_status"].items())))
        print("verify: " + ("all invariants hold" if result["verify"]["ok"] else str(result["verify"]["problems"])))
    return 0 if result["exit_code"] == 0 and result["verify"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
