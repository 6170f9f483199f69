"""CLI faces of lineage, replay, export and reports, plus ``status --watch``.

Layer 5. ``pbt_actors.cli.app`` registers these with ``add_lineage_parsers(subparsers)`` and routes
``status --watch`` to ``watch_status``. Every command opens the store read-only, so it can run
while a controller writes.

    pbt-actors lineage --store DIR TRIAL|best [--json]
    pbt-actors replay  --store DIR TRIAL|best --experiment EXP.py [--from-step A] [--to-step B]
                       [--schedule-out FILE] [--out DIR] [--same-data] [--dry-run] [--json]
    pbt-actors replay  --schedule FILE --experiment EXP.py ...      (no store needed)
    pbt-actors export  --store DIR --format csv|json [--out FILE]
    pbt-actors report  --store DIR [--out DIR] [--json]

``replay`` needs the experiment file because the store records the experiment's definition
but not where its ``train`` lives: ``--experiment`` is required.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TextIO

from pbt_actors.model.errors import ConfigError

STATUS_RUNNING_ROWS = 20
STATUS_TOP_ROWS = 5


# --- helpers -----------------------------------------------------------------------------------
def _open_store(store_dir: str | Path) -> AbstractContextManager[Any]:
    """The store at ``store_dir``, read-only.

    Raises:
        ConfigError: no store there (the CLI prints it and exits 2).
    """
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    path = Path(store_dir).resolve()
    if not (path / "data.mdb").exists():
        raise ConfigError(f"no pbt-actors store at {path}")
    return LmdbTrialStore(path, readonly=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_map(values: Mapping[str, Any] | None) -> str:
    if not values:
        return "-"
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


# --- lineage -----------------------------------------------------------------------------------
def cmd_lineage(args: argparse.Namespace) -> int:
    from pbt_actors.tools.lineage import lineage, resolve_trial, schedule

    with _open_store(args.store) as store:
        trial_id = resolve_trial(store, args.trial)
        dag = lineage(store, trial_id)
        sched = schedule(store, trial_id)
    if args.json:
        print(json.dumps({"trial_id": trial_id, "lineage": dag.to_dict(), "schedule": sched.to_dict()}))
        return 0
    crossovers = sum(1 for e in dag.edges if e.kind == "crossover")
    print(f"lineage of trial {trial_id}{' (' + sched.experiment + ')' if sched.experiment else ''}: "
          f"{len(dag)} trials, {crossovers} crossover edge(s); topological order (sources first)")
    rows = [[str(t.id), str(t.generation), f"{t.start_step}-{t.end_step}", _fmt(t.parent_id or "-"),
             _fmt(t.crossover_id or "-"), t.status.value, _fmt_map(t.final), _fmt_map(t.hparams)] for t in dag]
    for line in _table(["trial", "gen", "steps", "parent", "xover", "status", "final", "hparams"], rows):
        print("  " + line)
    print()
    print(f"schedule (the warm-start chain: {len(sched.segments)} segments; crossover sources gave "
          f"hyperparameters, not weights)")
    rows = [[f"{s.start_step}-{s.end_step}", str(s.trial_id), _fmt_map(s.hparams)] for s in sched.segments]
    for line in _table(["steps", "trial", "hparams"], rows):
        print("  " + line)
    return 0


# --- replay ------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.context import default_device
    from pbt_actors.runtime.launch import load_experiment_file
    from pbt_actors.tools.lineage import Schedule, resolve_trial, schedule
    from pbt_actors.tools.replay import SegmentResult, plan, replay

    if args.schedule is None and args.store is None:
        raise ConfigError("replay needs --store DIR (with TRIAL or 'best') or --schedule FILE")
    if args.schedule is not None:
        sched = Schedule.load(args.schedule)
    else:
        with _open_store(args.store) as store:
            sched = schedule(store, resolve_trial(store, args.trial))
    if args.schedule_out:
        sched.save(args.schedule_out)
        if not args.json:
            print(f"schedule of trial {sched.trial_id} written to {args.schedule_out}")
    experiment, train = load_experiment_file(args.experiment)
    if sched.experiment and experiment.name != sched.experiment:
        print(f"warning: the schedule comes from experiment {sched.experiment!r} but {args.experiment} defines "
              f"{experiment.name!r}", file=sys.stderr)
    steps = plan(sched, args.from_step, args.to_step)
    source_root = args.checkpoint_root or (str(Path(args.store) / "checkpoints") if args.store else None)
    suffix = f"-from-{steps[0].start_step}-to-{steps[-1].end_step}" \
        if (steps[0].start_step, steps[-1].end_step) != (sched.start_step, sched.end_step) else ""
    out = Path(args.out) if args.out else Path("pbt-replays") / (sched.experiment or experiment.name) / \
        f"trial-{sched.trial_id}{suffix}"
    if args.dry_run:
        if args.json:
            print(json.dumps({"trial_id": sched.trial_id, "out": str(out),
                              "plan": [{"trial_id": p.segment.trial_id, "start_step": p.start_step,
                                        "end_step": p.end_step, "hparams": dict(p.segment.hparams)} for p in steps]}))
        else:
            for p in steps:
                print(f"steps {p.start_step}-{p.end_step}  trial {p.segment.trial_id}  {_fmt_map(p.segment.hparams)}")
        return 0
    total = len(steps)
    done = 0

    def progress(result: SegmentResult) -> None:
        nonlocal done
        done += 1
        if args.json:
            return
        p = result.planned
        original = _fmt_map(p.segment.final) if p.complete else "(partial segment)"
        print(f"[{done}/{total}] trial {p.segment.trial_id} steps {p.start_step}-{p.end_step}  "
              f"{_fmt_map(p.segment.hparams)}  →  {_fmt_map(result.final)}  (search: {original})  "
              f"{result.wall_s:.2f}s", flush=True)

    if not args.json:
        data = "the search's data (ctx.replay=False)" if args.same_data else "replay data (ctx.replay=True)"
        print(f"replaying trial {sched.trial_id}: {total} segment(s), steps {steps[0].start_step}-"
              f"{steps[-1].end_step}, on {data}; checkpoints in {out}", flush=True)
    result = replay(sched, train, checkpoint_root=out, from_step=args.from_step, to_step=args.to_step,
                    source_checkpoint_root=source_root, replay_data=not args.same_data,
                    device=args.device or default_device(), on_segment=progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"final  {_fmt_map(result.final)}")
        if result.to_dict()["original_final"] is not None:
            print(f"search {_fmt_map(sched.final)}")
        if result.checkpoint is not None:
            print(f"state  {Path(result.checkpoint_root) / result.checkpoint.uri}")
    return 0


# --- export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from pbt_actors.tools.export import export_store

    with _open_store(args.store) as store:
        if args.out in (None, "-"):
            count = export_store(store, sys.stdout, args.format)
        else:
            target = Path(args.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w", encoding="utf-8", newline="") as handle:
                count = export_store(store, handle, args.format)
            print(f"{count} rows written to {target}", file=sys.stderr)
    return 0


# --- report ------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from pbt_actors.tools.report import write_report

    out = Path(args.out) if args.out else Path(args.store) / "report"
    with _open_store(args.store) as store:
        paths = write_report(store, out)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        print(f"report written: {paths['index']}")
    return 0


# --- status --watch --------------------------------------------------------------------------------
def watch_snapshot(store: Any, store_dir: str) -> dict[str, Any] | None:
    """``status --json``'s object plus ``running`` (one entry per RUNNING trial),
    ``top`` (the best completed trials) and ``refreshed_at``; None while the store holds no
    experiment yet."""
    from pbt_actors.cli.app import store_summary
    from pbt_actors.control.core import META_EXPERIMENT
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.model.records import TrialStatus

    raw = store.get_meta(META_EXPERIMENT)
    if raw is None:
        return None
    experiment = Experiment.from_dict(raw)
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
    completed = store.trials(store.ids_with_status(TrialStatus.COMPLETED))
    keys = experiment.objective_.rank_keys([t.final for t in completed]) if completed else []
    ranked = sorted(range(len(completed)), key=lambda i: (keys[i], -completed[i].id), reverse=True)
    top = [{"trial_id": completed[i].id, "generation": completed[i].generation, "end_step": completed[i].end_step,
            "final": dict(completed[i].final or {}), "hparams": dict(completed[i].hparams)}
           for i in ranked[:STATUS_TOP_ROWS]]
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
    lines.append("best       " + ("(no completed trial yet)" if best is None else
                                  f"trial {best['trial_id']} (gen {best['generation']}, step {best['end_step']})  "
                                  f"{_fmt_map(best['final'])}   {_fmt_map(best['hparams'])}"))
    lines.append("")
    running = snap["running"]
    lines.append(f"RUNNING ({len(running)})")
    rows = [[str(r["trial_id"]), str(r["generation"]), f"{r['start_step']}-{r['end_step']}", str(r["worker"]),
             str(r["attempt"]), "-" if r["step"] is None else str(r["step"]), _fmt_map(r["metrics"]),
             "-" if r["elapsed_s"] is None else f"{r['elapsed_s']:.1f}s"] for r in running[:STATUS_RUNNING_ROWS]]
    lines += ["  " + line for line in _table(["trial", "gen", "steps", "worker", "attempt", "at step", "last metrics",
                                                "elapsed"], rows)]
    if len(running) > STATUS_RUNNING_ROWS:
        lines.append(f"  ... and {len(running) - STATUS_RUNNING_ROWS} more")
    lines.append("")
    lines.append(f"TOP {len(snap['top'])} COMPLETED")
    rows = [[str(t["trial_id"]), str(t["generation"]), str(t["end_step"]), _fmt_map(t["final"]),
             _fmt_map(t["hparams"])] for t in snap["top"]]
    lines += ["  " + line for line in _table(["trial", "gen", "step", "final", "hparams"], rows)]
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
    tty = stream.isatty()
    stop = stop if stop is not None else threading.Event()
    path = Path(store_dir).resolve()
    updates = 0
    try:
        if not (path / "data.mdb").exists():
            print(f"no pbt-actors store at {path} yet; waiting (Ctrl-C to stop)", file=sys.stderr)
            while not (path / "data.mdb").exists():
                if stop.wait(interval_s):
                    return 0
        with _open_store(path) as store:
            while True:
                snap = watch_snapshot(store, str(path))
                if snap is not None:
                    if json_out:
                        stream.write(json.dumps(snap) + "\n")
                    elif tty:
                        stream.write("\033[H\033[2J" + render_watch(snap, interval_s) + "\n")
                    else:
                        stream.write(render_watch(snap, interval_s) + "\n\n")
                    stream.flush()
                    updates += 1
                    if snap["finished"]:
                        return 0
                if max_updates is not None and updates >= max_updates:
                    return 0
                if stop.wait(interval_s):
                    return 0
    except KeyboardInterrupt:
        return 130


# --- parsers -----------------------------------------------------------------------------------
def add_lineage_parsers(subparsers: Any) -> None:
    """Register ``lineage``, ``replay``, ``export`` and ``report`` on the CLI's subparsers."""
    lin = subparsers.add_parser("lineage", help="a trial's ancestor DAG (topological order) and its schedule")
    lin.add_argument("--store", required=True)
    lin.add_argument("trial", nargs="?", default="best", help="trial id or 'best' (default)")
    lin.add_argument("--json", action="store_true", help="print {trial_id, lineage, schedule} as JSON")
    lin.set_defaults(func=cmd_lineage)

    rep = subparsers.add_parser(
        "replay", help="re-run a trial's hyperparameter schedule from scratch in this process",
        description="Re-run the warm-start chain of a trial (its schedule) through the experiment file's "
                    "train(ctx), one segment per original trial, from scratch or from the stored checkpoint at "
                    "--from-step. ctx.replay is True unless --same-data.")
    rep.add_argument("--store", default=None, help="the search's store (or give --schedule)")
    rep.add_argument("trial", nargs="?", default="best", help="trial id or 'best' (default)")
    rep.add_argument("--experiment", "-e", required=True,
                     help="the experiment file whose train(ctx) to run (the store does not record its path)")
    rep.add_argument("--schedule", default=None, help="replay a schedule JSON file instead of reading the store")
    rep.add_argument("--schedule-out", default=None, help="also write the schedule as JSON to this file")
    rep.add_argument("--from-step", type=int, default=None,
                     help="start from the search's checkpoint at this step (a segment boundary)")
    rep.add_argument("--to-step", type=int, default=None, help="stop at this step (default: the trial's end)")
    rep.add_argument("--checkpoint-root", default=None,
                     help="the search's checkpoint folder, read for --from-step (default <store>/checkpoints)")
    rep.add_argument("--out", default=None,
                     help="folder for the replay's checkpoints (default ./pbt-replays/<experiment>/trial-<id>)")
    rep.add_argument("--same-data", action="store_true",
                     help="ctx.replay=False: train on exactly the search's data (to check reproduction)")
    rep.add_argument("--device", default=None, help="default: cuda:0 if available, else cpu")
    rep.add_argument("--dry-run", action="store_true", help="print the segments, train nothing")
    rep.add_argument("--json", action="store_true", help="print one JSON object with the result")
    rep.set_defaults(func=cmd_replay)

    exp = subparsers.add_parser("export", help="one row per trial and measurement, as CSV or JSON")
    exp.add_argument("--store", required=True)
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--out", default=None, help="file to write (default: standard output)")
    exp.set_defaults(func=cmd_export)

    rpt = subparsers.add_parser("report", help="PNG figures and an index.html for a finished or running store")
    rpt.add_argument("--store", required=True)
    rpt.add_argument("--out", default=None, help="folder for the report (default <store>/report)")
    rpt.add_argument("--json", action="store_true", help="print the written files as JSON")
    rpt.set_defaults(func=cmd_report)
