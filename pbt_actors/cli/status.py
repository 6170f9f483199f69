"""``status`` (once, ``--json``, or ``--watch`` live) and ``verify``: reading a store, never writing it.

Both open the store read-only, so they run beside a live controller without slowing it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from pbt_actors.cli import arguments
from pbt_actors.cli.live import LiveText
from pbt_actors.cli.summary import (
    final_population_text,
    fmt_map,
    open_store_readonly,
    print_summary,
    read_summary,
    store_summary,
    stored_experiment,
    table,
)
from pbt_actors.control.progress import top_completed
from pbt_actors.model.records import TrialStatus

STATUS_RUNNING_ROWS = 20
STATUS_TOP_ROWS = 5


def checkpoint_root_of(store_dir: Path, given: str | None) -> tuple[str | Path, bool]:
    """The checkpoint root to read: ``given`` (``--checkpoint-root``), else the one the store's
    controller recorded (``META_CHECKPOINT_ROOT``), else ``<store>/checkpoints``; and whether
    it is known (given or recorded) rather than the guessed default."""
    if given:
        return given, True
    from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT, SIMULATED_CHECKPOINTS

    if (store_dir / "data.mdb").exists():
        with open_store_readonly(store_dir) as store:
            recorded = store.get_meta(META_CHECKPOINT_ROOT)
        if isinstance(recorded, str) and recorded and recorded != SIMULATED_CHECKPOINTS:
            return recorded, True
    return store_dir / "checkpoints", False


def _simulated(store: Any) -> bool:
    """The simulator wrote this store: its checkpoint refs name no file."""
    from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT, SIMULATED_CHECKPOINTS

    return bool(store.get_meta(META_CHECKPOINT_ROOT) == SIMULATED_CHECKPOINTS)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return watch_status(args.store, args.interval, args.json)
    from pbt_actors.runtime.host.host_state import describe_host_states, read_host_states

    store_dir = Path(args.store).resolve()
    summary = read_summary(store_dir)
    if summary is None:
        print(f"no pbt-actors store at {store_dir}", file=sys.stderr)
        return 2
    hosts = read_host_states(checkpoint_root_of(store_dir, args.checkpoint_root)[0])  # a folder or a URL
    if args.output is not None:
        return _print_outputs(args, store_dir)
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir), "hosts": hosts}))
    else:
        print_summary(summary, str(store_dir))
        for line in describe_host_states(hosts):
            print(line)
    return 0


def _print_outputs(args: argparse.Namespace, store_dir: Path) -> int:
    """``status --output TRIAL``: the trial's attempts' kept stdout/stderr (command trials)."""
    from pbt_actors.cli.results import print_outputs
    from pbt_actors.tools.command_outputs import attempt_outputs

    with open_store_readonly(store_dir) as store:
        experiment = stored_experiment(store)
        trial = store.find_trial(args.output)
    if trial is None or experiment is None:
        print(f"no trial {args.output} in {store_dir}", file=sys.stderr)
        return 2
    outputs = attempt_outputs(args.checkpoint_root or str(store_dir / "checkpoints"), experiment.name, trial)
    if args.json:
        print(json.dumps({"trial_id": trial.id, "outputs": outputs}))
    else:
        print_outputs(trial.id, outputs)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pbt_actors.storage.checkpoint_urls import is_url
    from pbt_actors.tools.verify import verify_store

    store_dir = Path(args.store).resolve()
    if not (store_dir / "data.mdb").exists():
        print(f"no pbt-actors store at {store_dir}", file=sys.stderr)
        return 2
    root, known = checkpoint_root_of(store_dir, args.checkpoint_root)  # a folder or a URL (s3://...)
    with open_store_readonly(store_dir) as store:
        # a given or recorded root is always checked (a wrong one shows as absent checkpoints);
        # the default only when it exists; with none, checkpoints are counted unchecked
        simulated = not known and _simulated(store)
        checked = not simulated and (known or is_url(root) or Path(root).exists())
        report = verify_store(store, root if checked else None)
        if simulated:
            report.checkpoints_unchecked = 0  # there are no files to check, by design
    if args.json:
        print(json.dumps({**report.to_dict(), "checkpoint_root": str(root) if checked else None}))
    else:
        collected = f" ({report.checkpoints_collected} collected by retention)" if report.checkpoints_collected else ""
        if simulated:
            collected += " (a simulated run: its checkpoints are not files)"
        if not report.ok:
            verdict = f"{len(report.problems)} problem(s)"
        elif report.checkpoints_unchecked:
            verdict = (f"{report.checkpoints_unchecked} checkpoints NOT checked: the store records no checkpoint "
                       f"root and {root} does not exist; give --checkpoint-root")
        else:
            verdict = "all invariants hold"
        print(f"{report.trials} trials, {report.checkpoints_checked} checkpoints checked{collected}: {verdict}")
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.clean else 1


def watch_snapshot(store: Any, store_dir: str) -> dict[str, Any] | None:
    """``status --json``'s object plus ``running`` (one entry per RUNNING trial),
    ``top`` (the best completed trials) and ``refreshed_at``; None while the store holds no
    experiment yet."""
    experiment = stored_experiment(store)
    if experiment is None:
        return None
    summary = store_summary(store, experiment)
    now = time.time()
    running = []
    for trial in store.trials(store.ids_with_status(TrialStatus.RUNNING)):
        last = trial.measurements[-1] if trial.measurements else None
        running.append({
            "trial_id": trial.id, "generation": trial.generation, "start_step": trial.start_step,
            "end_step": trial.end_step, "attempt": trial.attempt,
            "worker": trial.lease.worker if trial.lease else trial.worker,
            "step": last.step if last else None, "metrics": dict(last.metrics) if last else None,
            "elapsed_s": round(now - trial.started_at, 3) if trial.started_at is not None else None,
        })
    # from the writer's best index: a refresh never rescans the completed trials
    top = [{"trial_id": t.id, "generation": t.generation, "end_step": t.end_step,
            "final": dict(t.final or {}), "hparams": dict(t.hparams)}
           for t in top_completed(store, experiment, STATUS_TOP_ROWS)]
    return {**summary, "store": store_dir, "running": running, "top": top, "refreshed_at": now}


def render_watch(snap: dict[str, Any], interval_s: float) -> str:
    """The live table ``status --watch`` draws."""
    counts = "  ".join(f"{k} {v}" for k, v in snap["by_status"].items() if v)
    lines = [
        f"experiment {snap['experiment']} (policy {snap['policy']})   store {snap['store']}",
        f"{time.strftime('%H:%M:%S', time.localtime(snap['refreshed_at']))}  every {interval_s:g}s  "
        f"{'FINISHED' if snap['finished'] else 'running'}   trials {snap['trials']}: {counts}   "
        f"max generation {snap['max_generation']}",
    ]
    best = snap["best"]
    lines.append("best overall " + ("(no completed trial yet)" if best is None else
                                  f"trial {best['trial_id']} (gen {best['generation']}, step {best['end_step']})  "
                                  f"{fmt_map(best['final'])}   {fmt_map(best['hparams'])}"))
    population = snap.get("final_population")
    if population and population["best"] is not None:
        lines.append(final_population_text(population))
    lines.append("")
    running = snap["running"]
    lines.append(f"RUNNING ({len(running)})")
    rows = [[str(r["trial_id"]), str(r["generation"]), f"{r['start_step']}-{r['end_step']}", str(r["worker"]),
             str(r["attempt"]), "-" if r["step"] is None else str(r["step"]), fmt_map(r["metrics"]),
             "-" if r["elapsed_s"] is None else f"{r['elapsed_s']:.1f}s"] for r in running[:STATUS_RUNNING_ROWS]]
    lines += ["  " + line for line in table(["trial", "gen", "steps", "worker", "attempt", "at step", "last metrics",
                                                "elapsed"], rows)]
    if len(running) > STATUS_RUNNING_ROWS:
        lines.append(f"  ... and {len(running) - STATUS_RUNNING_ROWS} more")
    lines.append("")
    lines.append(f"TOP {len(snap['top'])} COMPLETED")
    rows = [[str(t["trial_id"]), str(t["generation"]), str(t["end_step"]), fmt_map(t["final"]),
             fmt_map(t["hparams"])] for t in snap["top"]]
    lines += ["  " + line for line in table(["trial", "gen", "step", "final", "hparams"], rows)]
    return "\n".join(lines)


def watch_status(store_dir: str | Path, interval_s: float, json_out: bool, *, max_updates: int | None = None,
                 out: TextIO | None = None, stop: threading.Event | None = None) -> int:
    """``pbt-actors status --watch``: redraw a live table every ``interval_s`` seconds until
    the run finishes (exit 0) or Ctrl-C (exit 130).

    With ``json_out`` it prints one JSON object per refresh (JSON lines; see
    ``watch_snapshot``). On a terminal the table is redrawn in place; otherwise each refresh
    is printed below the previous one. A store that does not exist yet is waited for (the run
    may be starting). ``max_updates`` and ``stop`` end the loop early (tests, embedding).
    """
    stream = out if out is not None else sys.stdout
    stop = stop if stop is not None else threading.Event()
    path = Path(store_dir).resolve()
    updates = 0
    try:
        if not (path / "data.mdb").exists():
            print(f"no pbt-actors store at {path} yet; waiting (Ctrl-C to stop)", file=sys.stderr)
            while not (path / "data.mdb").exists():
                if stop.wait(interval_s):
                    return 0
        with open_store_readonly(path) as store, LiveText(stream) as screen:
            while True:
                snap = watch_snapshot(store, str(path))
                if snap is not None:
                    if json_out:
                        stream.write(json.dumps(snap) + "\n")
                        stream.flush()
                    else:
                        screen.show(render_watch(snap, interval_s))
                    updates += 1
                    if snap["finished"]:
                        return 0
                if max_updates is not None and updates >= max_updates:
                    return 0
                if stop.wait(interval_s):
                    return 0
    except KeyboardInterrupt:
        return 130


def add_parsers(sub: Any) -> None:
    """Register ``status`` and ``verify``."""
    status = sub.add_parser("status", help="read a live or finished store without disturbing it")
    status.add_argument("--store", required=True, type=arguments.store_path)
    status.add_argument("--checkpoint-root", default=None,
                        help="where the hosts publish their workers' state (default: the root the store's "
                             "controller recorded, else <store>/checkpoints)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="a live table that refreshes until the run ends")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    status.add_argument("--output", type=int, default=None, metavar="TRIAL",
                        help="print the kept stdout/stderr of TRIAL's attempts (command trials)")
    status.set_defaults(func=cmd_status)

    ver = sub.add_parser("verify", help="check every store invariant; non-zero exit when one breaks")
    ver.add_argument("--store", required=True, type=arguments.store_path)
    ver.add_argument("--checkpoint-root", default=None,
                     help="checkpoint folder or fsspec URL such as s3://bucket/prefix (default: the root the "
                          "store's controller recorded, else <store>/checkpoints)")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_verify)
