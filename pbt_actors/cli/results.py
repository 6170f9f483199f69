"""``lineage``, ``replay``, ``export`` and ``report``: the commands that read a run's results.

``pbt_actors.cli.main`` registers them with ``add_lineage_parsers(subparsers)``. Every command
opens the store read-only, so it can run while a controller writes.

    pbt-actors lineage --store DIR TRIAL|best [--output] [--checkpoint-root DIR|URL] [--json]
    pbt-actors replay  --store DIR TRIAL|best [--experiment EXP.py] [--from-step A] [--to-step B]
                       [--schedule-out FILE] [--out DIR] [--same-data] [--dry-run] [--json]
    pbt-actors replay  --schedule FILE --experiment EXP.py ...      (no store needed)
    pbt-actors export  --store DIR --format csv|json [--out FILE]
    pbt-actors export  --store DIR --format tensorboard --out DIR [--follow]
    pbt-actors report  --store DIR [--out DIR] [--json]

``replay`` runs the experiment file's ``train``: by default the file the run was started from
(``run``/``controller`` record its path and sha256 in the store; a warning when it changed),
else ``--experiment`` (required with ``--schedule``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pbt_actors.cli import arguments
from pbt_actors.cli.output_paths import checked_out, make_folder, writing
from pbt_actors.cli.summary import fmt_map, fmt_value, open_store_readonly, stored_experiment, table
from pbt_actors.model.errors import ConfigError


# --- lineage -----------------------------------------------------------------------------------
def cmd_lineage(args: argparse.Namespace) -> int:
    from pbt_actors.tools.command_outputs import attempt_outputs, schedule_commands
    from pbt_actors.tools.lineage import lineage, resolve_trial, schedule

    with open_store_readonly(args.store) as store:
        trial_id = resolve_trial(store, args.trial)
        dag = lineage(store, trial_id)
        sched = schedule(store, trial_id)
        experiment = stored_experiment(store)
        segment_trials = [store.get_trial(s.trial_id) for s in sched.segments] if args.output else []
    command = experiment.command if experiment is not None else None
    commands = schedule_commands(command, sched, python=sys.executable) if command else []
    root = args.checkpoint_root or str(Path(args.store) / "checkpoints")
    outputs = {t.id: attempt_outputs(root, sched.experiment, t) for t in segment_trials}
    if args.json:
        body: dict[str, Any] = {"trial_id": trial_id, "lineage": dag.to_dict(), "schedule": sched.to_dict()}
        if command:
            body["commands"] = commands
        if args.output:
            body["outputs"] = {str(k): v for k, v in outputs.items()}
        print(json.dumps(body))
        return 0
    crossovers = sum(1 for e in dag.edges if e.kind == "crossover")
    print(f"lineage of trial {trial_id}{' (' + sched.experiment + ')' if sched.experiment else ''}: "
          f"{len(dag)} trials, {crossovers} crossover edge(s); topological order (sources first)")
    rows = [[str(t.id), str(t.generation), f"{t.start_step}-{t.end_step}", fmt_value(t.parent_id or "-"),
             fmt_value(t.crossover_id or "-"), t.status.value, fmt_map(t.final), fmt_map(t.hparams)] for t in dag]
    for line in table(["trial", "gen", "steps", "parent", "xover", "status", "final", "hparams"], rows):
        print("  " + line)
    print()
    print(f"schedule (the warm-start chain: {len(sched.segments)} segments; crossover sources gave "
          f"hyperparameters, not weights)")
    rows = [[f"{s.start_step}-{s.end_step}", str(s.trial_id),
             "collected" if s.collected else ("kept" if s.checkpoint is not None else "-"), fmt_map(s.hparams)]
            for s in sched.segments]
    for line in table(["steps", "trial", "checkpoint", "hparams"], rows):
        print("  " + line)
    if any(s.collected for s in sched.segments):
        print("  (checkpoint collected: retention deleted it; `replay` from step "
              f"{sched.segments[0].start_step} needs none)")
    if commands:
        print()
        print("commands (a command trial: what `replay` runs per segment, in the experiment file's folder)")
        for seg, line in zip(sched.segments, commands, strict=True):
            print(f"  {seg.start_step}-{seg.end_step}  {line}")
    for trial in segment_trials:
        print_outputs(trial.id, outputs[trial.id])
    return 0


def print_outputs(trial_id: int, outputs: list[dict[str, Any]]) -> None:
    """A command trial's attempts' output tails (``lineage --output``, ``status --output``)."""
    print()
    if not outputs:
        print(f"trial {trial_id}: no output kept (not a command trial, or its logs are elsewhere: --checkpoint-root)")
    for item in outputs:
        print(f"--- trial {trial_id} attempt {item['attempt']} ---")
        print(item["output"].rstrip("\n"))


# --- replay ------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.host.launch import load_experiment_file
    from pbt_actors.runtime.worker.trial_context import default_device
    from pbt_actors.tools.lineage import Schedule, resolve_trial, schedule
    from pbt_actors.tools.replay import SegmentResult, plan, replay

    if args.schedule is None and args.store is None:
        raise ConfigError("replay needs --store DIR (with TRIAL or 'best') or --schedule FILE")
    experiment_file = args.experiment
    if args.schedule is not None:
        if experiment_file is None:
            raise ConfigError("replay --schedule needs --experiment EXP.py (a schedule file names no experiment file)")
        sched = Schedule.load(args.schedule)
    else:
        with open_store_readonly(args.store) as store:
            sched = schedule(store, resolve_trial(store, args.trial))
            if experiment_file is None:  # the file the run was started from (recorded in the store)
                from pbt_actors.tools.experiment_source import recorded_experiment_file

                recorded = recorded_experiment_file(store)
                experiment_file = str(recorded.path)
                if recorded.warning():
                    print(recorded.warning(), file=sys.stderr)
    if args.schedule_out:
        sched.save(args.schedule_out)
        if not args.json:
            print(f"schedule of trial {sched.trial_id} written to {args.schedule_out}")
    experiment, train = load_experiment_file(experiment_file)
    if sched.experiment and experiment.name != sched.experiment:
        print(f"warning: the schedule comes from experiment {sched.experiment!r} but {experiment_file} defines "
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
                print(f"steps {p.start_step}-{p.end_step}  trial {p.segment.trial_id}  {fmt_map(p.segment.hparams)}")
        return 0
    total = len(steps)
    done = 0

    def progress(result: SegmentResult) -> None:
        nonlocal done
        done += 1
        if args.json:
            return
        p = result.planned
        original = fmt_map(p.segment.final) if p.complete else "(partial segment)"
        print(f"[{done}/{total}] trial {p.segment.trial_id} steps {p.start_step}-{p.end_step}  "
              f"{fmt_map(p.segment.hparams)}  →  {fmt_map(result.final)}  (search: {original})  "
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
        print(f"final  {fmt_map(result.final)}")
        if result.to_dict()["original_final"] is not None:
            print(f"search {fmt_map(sched.final)}")
        if result.checkpoint is not None:
            print(f"state  {result.state_path}")
    return 0


# --- export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from pbt_actors.tools.export import export_store

    if args.format == "tensorboard":
        from pbt_actors.cli.export_tensorboard import cmd_export_tensorboard

        return cmd_export_tensorboard(args)
    if args.follow:
        raise ConfigError("--follow needs --format tensorboard")
    if args.format == "checkpoint":
        return _export_checkpoint(args)
    target = None if args.out in (None, "-") else checked_out(args.out, args.store)
    with open_store_readonly(args.store) as store:
        if target is None:
            count = export_store(store, sys.stdout, args.format)
        else:
            make_folder(target.parent, args.out)
            with writing(args.out), target.open("w", encoding="utf-8", newline="") as handle:
                count = export_store(store, handle, args.format)
            print(f"{count} rows written to {args.out}", file=sys.stderr)
    return 0


def _export_checkpoint(args: argparse.Namespace) -> int:
    """``export --format checkpoint``: the best (or ``--trial``) trial's checkpoint, a file or
    a folder, copied verified to ``--out``."""
    from pbt_actors.cli.summary import stored_experiment
    from pbt_actors.control.progress import best_completed
    from pbt_actors.storage.checkpoint_urls import normalize_root
    from pbt_actors.tools.checkpoint_export import export_checkpoint

    if args.out in (None, "-"):
        raise ConfigError("--format checkpoint needs --out PATH (a file, or a folder for a directory checkpoint)")
    target = checked_out(args.out, args.store)
    root = normalize_root(args.checkpoint_root or Path(args.store) / "checkpoints")
    with open_store_readonly(args.store) as store:
        if args.trial in (None, "best"):
            experiment = stored_experiment(store)
            trial = None if experiment is None else best_completed(store, experiment)
        else:
            trial = store.find_trial(int(args.trial)) if str(args.trial).isdigit() else None
        if trial is None:
            which = "completed trial" if args.trial in (None, "best") else f"trial {args.trial}"
            raise ConfigError(f"no {which} in {args.store}")
        if trial.checkpoint is None or trial.collected_at is not None:
            raise ConfigError(f"trial {trial.id} has no stored checkpoint (collected by retention, or none saved); "
                              "`pbt-actors replay` rebuilds it from its schedule")
        ref = trial.checkpoint
    with writing(args.out):
        make_folder(target.parent, args.out)
        placed = export_checkpoint(root, ref, target)
    print(f"trial {trial.id}'s checkpoint (step {ref.step}) written to {placed}", file=sys.stderr)
    return 0


# --- report ------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from pbt_actors.tools.report import write_report

    own = Path(args.store) / "report"  # the default: the report's own subfolder of the store
    out = checked_out(args.out or own, args.store, own=own)
    with open_store_readonly(args.store) as store:
        make_folder(out, args.out or own)
        with writing(args.out or own):
            paths = write_report(store, out)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        print(f"report written: {paths['index']}")
    return 0


# --- parsers -----------------------------------------------------------------------------------
def add_lineage_parsers(subparsers: Any) -> None:
    """Register ``lineage``, ``replay``, ``export`` and ``report`` on the CLI's subparsers."""
    lin = subparsers.add_parser("lineage", help="a trial's ancestor DAG (topological order) and its schedule")
    lin.add_argument("--store", required=True, type=arguments.store_path)
    lin.add_argument("trial", nargs="?", default="best", help="trial id or 'best' (default)")
    lin.add_argument("--json", action="store_true", help="print {trial_id, lineage, schedule} as JSON")
    lin.add_argument("--output", action="store_true",
                     help="also print each schedule trial's kept stdout/stderr (command trials)")
    lin.add_argument("--checkpoint-root", default=None,
                     help="checkpoint folder or URL holding the output logs (default <store>/checkpoints)")
    lin.set_defaults(func=cmd_lineage)

    rep = subparsers.add_parser(
        "replay", help="re-run a trial's hyperparameter schedule from scratch in this process",
        description="Re-run the warm-start chain of a trial (its schedule) through the experiment file's "
                    "train(ctx), one segment per original trial, from scratch or from the stored checkpoint at "
                    "--from-step. ctx.replay is True unless --same-data.")
    rep.add_argument("--store", default=None, type=arguments.store_path, help="the search's store (or give --schedule)")
    rep.add_argument("trial", nargs="?", default="best", help="trial id or 'best' (default)")
    rep.add_argument("--experiment", "-e", default=None,
                     help="the experiment file whose train(ctx) to run (default with --store: the file the run "
                          "was started from, recorded in the store; a warning if it changed since)")
    rep.add_argument("--schedule", default=None, help="replay a schedule JSON file instead of reading the store")
    rep.add_argument("--schedule-out", default=None, help="also write the schedule as JSON to this file")
    rep.add_argument("--from-step", type=int, default=None,
                     help="start from the search's checkpoint at this step (a segment boundary)")
    rep.add_argument("--to-step", type=int, default=None, help="stop at this step (default: the trial's end)")
    rep.add_argument("--checkpoint-root", default=None,
                     help="the search's checkpoint folder or URL (s3://bucket/prefix), read for --from-step "
                          "(default <store>/checkpoints)")
    rep.add_argument("--out", default=None,
                     help="folder for the replay's checkpoints (default ./pbt-replays/<experiment>/trial-<id>)")
    rep.add_argument("--same-data", action="store_true",
                     help="ctx.replay=False: train on exactly the search's data (to check reproduction)")
    rep.add_argument("--device", default=None, help="default: cuda:0 if available, else cpu")
    rep.add_argument("--dry-run", action="store_true", help="print the segments, train nothing")
    rep.add_argument("--json", action="store_true", help="print one JSON object with the result")
    rep.set_defaults(func=cmd_replay)

    exp = subparsers.add_parser("export", help="one row per trial and measurement (CSV, JSON), or TensorBoard runs")
    exp.add_argument("--store", required=True, type=arguments.store_path)
    exp.add_argument("--format", choices=["csv", "json", "tensorboard", "checkpoint"], default="csv",
                     help="tensorboard: one run per lineage, event files under --out DIR; checkpoint: the best "
                          "(or --trial) trial's checkpoint, a file or a folder, verified, to --out")
    exp.add_argument("--trial", default=None, help="checkpoint: a trial id instead of the best")
    exp.add_argument("--checkpoint-root", default=None,
                     help="checkpoint: the run's checkpoint folder or URL (default <store>/checkpoints)")
    exp.add_argument("--out", default=None, help="file to write (default: standard output); a folder for tensorboard")
    exp.add_argument("--follow", action="store_true",
                     help="tensorboard: keep appending trials as they complete until the run ends")
    exp.add_argument("--interval", type=float, default=1.0, help="seconds between polls (--follow)")
    exp.set_defaults(func=cmd_export)

    rpt = subparsers.add_parser("report", help="PNG figures and an index.html for a finished or running store")
    rpt.add_argument("--store", required=True, type=arguments.store_path)
    rpt.add_argument("--out", default=None, help="folder for the report (default <store>/report)")
    rpt.add_argument("--json", action="store_true", help="print the written files as JSON")
    rpt.set_defaults(func=cmd_report)
