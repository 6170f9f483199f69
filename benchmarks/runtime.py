"""Runtime benchmark: controller throughput, worker idle gap, digits wall time vs floor.

    python benchmarks/runtime.py [--seconds 3] [--skip-digits] [--starts 5] [--worker-start-only] [--json]

(a) controller cycles/s (request_trial → trial → report → ack, no-op training) with 1..8
    worker processes, next to a raw pyzmq ROUTER/DEALER msgpack echo (two round trips per
    cycle) measured in the same run; and the same with ``report(next)``, which gets the next
    trial in the report's reply (one round trip per trial, what ``WorkerClient`` does).
    Every acknowledged report is durable in LMDB (fsync'd commits, batched per poll cycle).
(b) the worker's idle gap between trials (report sent → next ``train`` entered; the report's
    ack, durable in LMDB, brings the next trial), p50/p99, with ``WorkerClient`` and a no-op
    ``train`` (no checkpoint I/O).
(c) ``examples/digits.py`` under ``pbt-actors run`` next to the compute floor: the same
    trials' training run back to back in one process with no framework, divided by the number
    of workers.
(d) worker start: ``ChildSpec.factory()`` called → the experiment file's first line runs in the
    new worker, and → torch imported and a ``torch.optim`` optimizer built (what a first trial
    needs), for a worker forked from the zygote and for a fresh interpreter (the fallback),
    alternately in the same run, in a process that has imported torch as the CLI has. Runs
    first, while this process is still single-threaded (the zygote needs that).
    ``--worker-start-only`` runs just this part (quick).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- (a) raw echo baseline ------------------------------------------------------------------------
def _echo_server(address: str, ready: threading.Event, stop: threading.Event) -> None:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    address_holder.append(f"tcp://127.0.0.1:{port}")
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    import msgpack

    while not stop.is_set():
        if poller.poll(50):
            while True:
                try:
                    ident, payload = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = msgpack.unpackb(payload)
                sock.send_multipart([ident, msgpack.packb({"v": 1, "t": "ack", "id": msg["id"], "b": {}})])
    sock.close()


address_holder: list[str] = []


def _echo_client(address: str, seconds: float, counter: mp.Value) -> None:  # type: ignore[valid-type]
    import msgpack
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    body = {"worker": "w", "trial_id": 1, "attempt": 1, "final": {"score": 0.5}, "measurements": []}
    done, deadline, rid = 0, time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        for kind in ("request_trial", "report"):
            rid += 1
            sock.send(msgpack.packb({"v": 1, "t": kind, "id": rid, "b": body}))
            msgpack.unpackb(sock.recv())
        done += 1
    with counter.get_lock():
        counter.value += done
    sock.close()


def _run_all(procs: list[mp.Process]) -> float:
    """Start every client process, wait for all of them; the wall seconds that took."""
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.monotonic() - started


def raw_echo_cycles(workers: int, seconds: float) -> float:
    stop, ready = threading.Event(), threading.Event()
    address_holder.clear()
    server = threading.Thread(target=_echo_server, args=("", ready, stop), daemon=True)
    server.start()
    ready.wait(10)
    counter = mp.Value("l", 0)
    elapsed = _run_all([mp.Process(target=_echo_client, args=(address_holder[0], seconds, counter))
                        for _ in range(workers)])
    stop.set()
    server.join(5)
    return counter.value / max(elapsed, 1e-9)


# --- (a) controller cycles --------------------------------------------------------------------------
def _controller_client(address: str, name: str, seconds: float, counter: mp.Value,  # type: ignore[valid-type]
                       piggyback: bool) -> None:
    from pbt_actors.model.protocol import Report, RequestTrial, TrialAssignment
    from pbt_actors.transport.endpoints import WorkerEndpoint

    endpoint = WorkerEndpoint(address, name)
    done, deadline = 0, time.monotonic() + seconds
    reply = None
    while time.monotonic() < deadline:
        if not isinstance(reply, TrialAssignment):
            reply = endpoint.request(RequestTrial(name), timeout_s=10)
            if not isinstance(reply, TrialAssignment):
                continue
        # piggyback: the report asks for the next trial (``next``), as ``WorkerClient`` does
        answer = endpoint.request(Report(name, reply.trial_id, reply.attempt, {"score": 0.5}, next=piggyback),
                                  timeout_s=10)
        reply = answer if piggyback else None
        done += 1
    with counter.get_lock():
        counter.value += done
    endpoint.close()


def controller_cycles(workers: int, seconds: float, piggyback: bool = False) -> tuple[float, int]:
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.space import Float
    from pbt_actors.runtime.controller.controller_actor import Controller
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    experiment = Experiment(name="bench", space={"x": Float(0.0, 1.0)}, objective="score", population=64,
                            steps_per_trial=1, max_steps=10**9, lease_s=600)
    with tempfile.TemporaryDirectory() as tmp:
        handle = Controller.start(experiment, tmp, "tcp://127.0.0.1:0")
        counter = mp.Value("l", 0)
        elapsed = _run_all([mp.Process(target=_controller_client,
                                       args=(handle.endpoint, f"bench-{i}", seconds, counter, piggyback))
                            for i in range(workers)])
        handle.stop()
        with LmdbTrialStore(tmp, readonly=True) as store:
            from pbt_actors.model.records import TrialStatus

            durable = store.count(TrialStatus.COMPLETED)
    return counter.value / max(elapsed, 1e-9), durable - counter.value


# --- (b) idle gap ---------------------------------------------------------------------------------------
def idle_gaps(trials: int = 400) -> tuple[list[float], list[float]]:
    """Per trial: (report sent → next ``train`` entered, report acknowledged → next ``train``)."""
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.space import Float
    from pbt_actors.runtime.controller.controller_actor import Controller
    from pbt_actors.runtime.worker.worker_client import WorkerClient

    experiment = Experiment(name="gap", space={"x": Float(0.0, 1.0)}, objective="score", population=8,
                            steps_per_trial=1, max_steps=10**9, max_trials=trials, lease_s=600)
    entered: list[float] = []

    def train(ctx):
        entered.append(time.perf_counter())
        return {"score": float(ctx.hparams["x"])}

    with tempfile.TemporaryDirectory() as tmp:
        handle = Controller.start(experiment, Path(tmp) / "store", "tcp://127.0.0.1:0")
        client = WorkerClient(handle.endpoint, train, tmp, worker_id="gap-0")
        sent: list[float] = []
        acked: list[float] = []
        original = client._deliver

        def deliver(message):
            sent.append(time.perf_counter())
            original(message)
            acked.append(time.perf_counter())

        client._deliver = deliver  # type: ignore[method-assign]
        client.run()
        client.close()
        handle.stop()
    count = min(len(acked), len(entered) - 1)
    return ([entered[i + 1] - sent[i] for i in range(count)], [entered[i + 1] - acked[i] for i in range(count)])


# --- (c) digits ---------------------------------------------------------------------------------------------
def digits_wall_vs_floor(workers: int = 2, tree: Path | None = None,
                         extra_env: dict[str, str] | None = None) -> dict[str, float]:
    """(c) once; ``tree``: run ``pbt-actors run`` from that checkout instead (the floor and the
    start-up are measured with this one: they do not depend on the framework)."""
    from pbt_actors.runtime.host.launch import load_experiment_file
    from pbt_actors.runtime.worker.trial_context import TrialContext
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    example = REPO / "examples" / "digits.py"
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        started = time.monotonic()
        env = {**os.environ, **(extra_env or {})}
        if tree is not None:
            env |= {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-m", "pbt_actors.cli", "run", str(example), "--workers",
                               str(workers), "--devices", "cpu", "--store", str(store_dir), "--json"],
                              capture_output=True, text=True, check=True, cwd=tree or REPO, env=env)
        wall = time.monotonic() - started
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        t0 = time.monotonic()
        warm_imports = "import torch, sklearn.datasets, pbt_actors.runtime.worker.worker_client"
        subprocess.run([sys.executable, "-c", warm_imports], check=True)
        startup = time.monotonic() - t0
        # the floor: every trial's training again, back to back, in this process, no framework
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
        _, train = load_experiment_file(example)
        with LmdbTrialStore(store_dir, readonly=True) as store:
            trials = list(store.iter_trials())
            compute = 0.0
            for trial in trials:
                parent = store.checkpoint(trial.parent_id) if trial.parent_id else None
                ctx = TrialContext(trial.id, 1, trial.generation, dict(trial.hparams), trial.start_step,
                                   trial.end_step, str(store_dir / "checkpoints"), parent, "cpu",
                                   experiment=summary["experiment"])
                t = time.perf_counter()
                train(ctx)
                compute += time.perf_counter() - t
    floor = compute / workers
    return {"wall_s": wall, "compute_s": compute, "floor_s": floor, "startup_s": startup,
            "ratio_to_floor_plus_startup": wall / (floor + startup), "trials": len(trials)}


# --- (d) worker start: zygote fork vs fresh interpreter ---------------------------------------------
START_PROBE = """
import time
T_FIRST_LINE = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
import json
import sys
import torch
from pbt_actors import Experiment, Float

experiment = Experiment(name="start_probe", space={"x": Float(0.0, 1.0)}, objective="Q", population=2,
                        steps_per_trial=1, max_steps=1)


def train(ctx):
    return {"Q": 0.0}


if "worker-process" in sys.argv:
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the first optimizer imports torch._dynamo
    print("START " + json.dumps({"first_line": T_FIRST_LINE, "ready": time.monotonic()}), flush=True)
    sys.exit(0)
"""


def worker_start(starts: int) -> dict[str, object]:
    """Seconds from ``factory()`` to the probe's first line and to "torch ready", per start."""
    from pbt_actors.runtime.host.launch import load_experiment_file, worker_specs
    from pbt_actors.runtime.host.zygote import Zygote

    samples: dict[str, list[tuple[float, float]]] = {"fork": [], "fresh": []}
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "start_probe.py"
        probe.write_text(START_PROBE)
        load_experiment_file(probe)  # as the CLI does before it starts the zygote: torch is imported
        zygote = Zygote.start()
        try:
            specs = {name: worker_specs(str(probe), "tcp://127.0.0.1:9", tmp, "cpu", 1, prefix=name, log_dir=tmp,
                                        zygote=zygote if name == "fork" else None)[0] for name in samples}
            for _ in range(starts):
                for name, spec in specs.items():
                    started = time.monotonic()
                    process = spec.factory()
                    if process.wait(300) != 0:
                        raise RuntimeError(f"{name} worker failed: see {tmp}/{spec.id}.log")
                    lines = (Path(tmp) / f"{spec.id}.log").read_text().splitlines()
                    report = json.loads([line for line in lines if line.startswith("START ")][-1][6:])
                    samples[name].append((report["first_line"] - started, report["ready"] - started))
        finally:
            zygote.close()
    kinds = {}
    for name, values in samples.items():
        later = values[1:] or values  # the first fork also waits for the zygote's own preload
        kinds[name] = {"first_line_p50_ms": statistics.median(v[0] for v in later) * 1e3,
                       "ready_p50_ms": statistics.median(v[1] for v in later) * 1e3,
                       "first_start_first_line_ms": values[0][0] * 1e3, "first_start_ready_ms": values[0][1] * 1e3,
                       "starts": len(values)}
    fork, fresh = kinds["fork"], kinds["fresh"]
    return {**kinds, "ratio_first_line": fresh["first_line_p50_ms"] / fork["first_line_p50_ms"],
            "ratio_ready": fresh["ready_p50_ms"] / fork["ready_p50_ms"]}


def print_worker_start(d: dict[str, object]) -> None:
    fork, fresh = d["fork"], d["fresh"]
    assert isinstance(fork, dict) and isinstance(fresh, dict)
    print(f"(d) worker start, factory() → experiment file's first line / → torch + an optimizer ready,\n"
          f"    p50 over {fork['starts'] - 1 or 1} starts each, alternating (the first fork, which also waits for "
          f"the zygote's preload, apart):")
    print(f"    zygote fork        {fork['first_line_p50_ms']:9.1f} ms / {fork['ready_p50_ms']:9.1f} ms   "
          f"(first fork: {fork['first_start_first_line_ms']:.0f} / {fork['first_start_ready_ms']:.0f} ms)")
    print(f"    fresh interpreter  {fresh['first_line_p50_ms']:9.1f} ms / {fresh['ready_p50_ms']:9.1f} ms")
    print(f"    fork is {d['ratio_first_line']:.0f}x faster to the first line, {d['ratio_ready']:.0f}x to torch ready")


def digits_only(runs: int, tree: Path | None, sync_writes: bool = False) -> None:
    """(c) ``runs`` times, and from ``tree`` as often, alternately (a loaded machine drifts);
    ``sync_writes``: also with ``PBT_ACTORS_BACKGROUND_WRITES=0`` (this tree)."""
    kinds: list[tuple[str, Path | None, dict[str, str]]] = [("this tree", None, {})]
    if tree is not None:
        kinds.append((str(tree), tree, {}))
    if sync_writes:
        kinds.append(("this tree, synchronous writes", None, {"PBT_ACTORS_BACKGROUND_WRITES": "0"}))
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    for run in range(runs):
        for name, where, extra in kinds:
            d = digits_wall_vs_floor(tree=where, extra_env=extra)
            ratios[name].append(d["ratio_to_floor_plus_startup"])
            print(f"(c) run {run + 1} {name}: wall {d['wall_s']:.2f}s, {d['trials']:.0f} trials, floor "
                  f"{d['floor_s']:.2f}s + start-up {d['startup_s']:.2f}s: {d['ratio_to_floor_plus_startup']:.2f}x",
                  flush=True)
    for name, values in ratios.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"(c) {name}: median {statistics.median(values):.2f}x of {len(values)} ({shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--starts", type=int, default=5, help="(d): worker starts of each kind")
    parser.add_argument("--worker-start-only", action="store_true", help="run only (d), the quick part")
    parser.add_argument("--digits-only", type=int, default=0, metavar="RUNS",
                        help="run only (c), RUNS times (alternating with --tree's runs when given)")
    parser.add_argument("--sync-writes", action="store_true", help="with --digits-only: also run (c) with "
                        "PBT_ACTORS_BACKGROUND_WRITES=0, alternately")
    parser.add_argument("--tree", type=Path, help="with --digits-only: also run (c) from this checkout, "
                        "alternately, for same-run before/after ratios")
    args = parser.parse_args()
    if args.digits_only:
        digits_only(args.digits_only, args.tree, args.sync_writes)
        return
    start = worker_start(args.starts)  # first: forking the zygote needs a single-threaded process
    if args.worker_start_only:
        if args.json:
            print(json.dumps({"worker_start": start}, indent=2))
        else:
            print_worker_start(start)
        return
    results: dict[str, object] = {"cycles": [], "worker_start": start}
    rows = []
    for n in [int(w) for w in args.workers.split(",")]:
        raw = raw_echo_cycles(n, args.seconds)
        ours, extra = controller_cycles(n, args.seconds)
        merged, extra_merged = controller_cycles(n, args.seconds, piggyback=True)
        rows.append((n, raw, ours, ours / raw, merged, merged / raw))
        results["cycles"].append({"workers": n, "raw_echo_cycles_s": raw, "controller_cycles_s": ours,  # type: ignore[attr-defined]
                                  "ratio": ours / raw, "durable_minus_acked": extra,
                                  "report_next_cycles_s": merged, "report_next_ratio": merged / raw,
                                  "report_next_durable_minus_acked": extra_merged})
    from_sent, from_ack = (sorted(g) for g in idle_gaps())
    p50, p99 = statistics.median(from_sent), from_sent[int(0.99 * (len(from_sent) - 1))]
    a50, a99 = statistics.median(from_ack), from_ack[int(0.99 * (len(from_ack) - 1))]
    gaps = from_sent
    results["idle_gap_ms"] = {"p50": p50 * 1e3, "p99": p99 * 1e3, "samples": len(gaps),
                              "after_ack_p50": a50 * 1e3, "after_ack_p99": a99 * 1e3}
    if not args.skip_digits:
        results["digits"] = digits_wall_vs_floor()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("(a) trial cycles/s, no-op training, every ack durable in LMDB. 'two-step': request_trial → trial,\n"
          "    report → ack (2 round trips, like the raw echo); 'report+next': report(next) → trial, the\n"
          "    one round trip per trial that WorkerClient uses")
    print(f"{'workers':>8} {'raw echo':>10} {'two-step':>9} {'ratio':>7} {'report+next':>12} {'ratio':>7}")
    for n, raw, ours, ratio, merged, merged_ratio in rows:
        print(f"{n:>8} {raw:>10.0f} {ours:>9.0f} {ratio:>7.1%} {merged:>12.0f} {merged_ratio:>7.1%}")
    print(f"\n(b) worker idle gap (report sent → next train entered, the ack bringing the trial): p50 "
          f"{p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms over {len(gaps)} trials (of which after the ack: "
          f"p50 {a50 * 1e3:.2f} ms, p99 {a99 * 1e3:.2f} ms)")
    if "digits" in results:
        d = results["digits"]
        assert isinstance(d, dict)
        print(f"\n(c) examples/digits.py: wall {d['wall_s']:.1f}s for {d['trials']} trials; compute floor "
              f"{d['floor_s']:.1f}s (= {d['compute_s']:.1f}s / 2 workers) + start-up {d['startup_s']:.1f}s; "
              f"ratio {d['ratio_to_floor_plus_startup']:.2f}x")
    print()
    print_worker_start(start)


if __name__ == "__main__":
    main()
