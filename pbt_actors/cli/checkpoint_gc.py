"""``pbt-actors gc`` and ``pbt-actors pin``: checkpoint retention for a stopped store.

    pbt-actors gc  --store DIR [--checkpoint-root DIR|URL] [--dry-run] [--force] [--json]
    pbt-actors pin --store DIR TRIAL_ID [--unpin] [--wait S] [--json]

A running controller collects by itself (``runtime.controller.checkpoint_collector.Collector``); these commands
open the store as its writer. ``gc`` refuses a store whose controller still runs (the writer
lock names it); ``pin`` then hands the request to the live controller instead
(``runtime.controller.pin_requests``: a request file it applies before its next retention
plan) and waits until it has, so a checkpoint can be protected before retention takes it.
``gc --dry-run`` lists what would be deleted and why the rest stays; ``gc`` also sweeps the
files of directory checkpoints no record references (``sweep_orphan_directories``: a writer
that died before its manifest, a deletion cut short), under finished trials only;
``--force`` collects even when the experiment was run with retention off. A pinned trial's
checkpoint is never collected, by either.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pbt_actors.cli import arguments
from pbt_actors.model.errors import ConfigError, StoreLocked


def _open_writer(store_dir: str) -> Any:
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    path = Path(store_dir).resolve()
    if not (path / "data.mdb").exists():
        raise ConfigError(f"no pbt-actors store at {path}")
    return LmdbTrialStore(path)


def cmd_gc(args: argparse.Namespace) -> int:
    from pbt_actors.cli.summary import stored_experiment
    from pbt_actors.runtime.controller.checkpoint_collector import (
        checkpoint_bytes,
        checkpoint_deleter,
        collect_store,
        sweep_orphan_directories,
        sweep_stale_attempt_files,
    )
    from pbt_actors.storage.checkpoint_urls import normalize_root

    root = normalize_root(args.checkpoint_root or Path(args.store) / "checkpoints")
    with _open_writer(args.store) as store:
        experiment = stored_experiment(store)
        if experiment is None:
            raise ConfigError(f"the store at {args.store} holds no experiment yet")
        if not experiment.retention.enabled and not args.force and not args.dry_run:
            raise ConfigError(f"experiment {experiment.name!r} was run with retention off; "
                              "use --force to collect anyway (or --dry-run to see what would go)")
        result = collect_store(store, experiment, checkpoint_deleter(root), dry_run=args.dry_run, force=True,
                               size_of=checkpoint_bytes(root))
        keep = {str(i): why for i, why in sorted(result.plan.keep.items())}
        orphans, orphan_errors = sweep_orphan_directories(store, experiment, root, dry_run=args.dry_run)
        result.errors.extend(orphan_errors)
        # the resume checkpoints of completed trials' preempted attempts: no record needs them
        stale, stale_errors = sweep_stale_attempt_files(store, root, experiment.name, checkpoint_deleter(root),
                                                        dry_run=args.dry_run)
        result.errors.extend(stale_errors)
    absent = {i for i, _uri in result.absent}
    deletes = [{"trial": i, "uri": uri} for i, uri in result.targets if i not in absent]
    missing = [{"trial": i, "uri": uri} for i, uri in result.absent]
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "checkpoint_root": root, "held": len(result.plan.held),
                          "bound": result.plan.bound, "delete": deletes, "deleted": result.deleted,
                          "bytes": result.bytes_freed, "keep": keep, "errors": result.errors, "absent": missing,
                          "unreferenced_directories": orphans,
                          "stale_attempt_files": [{"trial": i, "uri": uri} for i, uri in stale]}))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for item in deletes:
            print(f"{verb} trial {item['trial']}: {item['uri']}")
        for item in missing:
            print(f"not found, nothing deleted: trial {item['trial']}: {item['uri']}")
        for uri in orphans:
            print(f"{verb} unreferenced directory checkpoint: {uri} (and its files)")
        print(f"{verb} {len(deletes) if args.dry_run else len(result.deleted)} of {len(result.plan.held)} held "
              f"checkpoint(s), {result.bytes_freed} bytes; keeping {len(keep)} (bound {result.plan.bound}) "
              f"under {root}")
        for stale_id, uri in stale:
            print(f"{verb} trial {stale_id}'s resume checkpoint of an earlier attempt: {uri}")
        if stale:
            print(f"{verb} {len(stale)} resume checkpoint(s) of completed trials' earlier attempts")
        for trial_id, why in keep.items():
            print(f"keep trial {trial_id}: {why}")
        for line in result.errors:
            print(f"error: {line}")
        if missing:
            print(f"error: {len(missing)} checkpoint(s) to collect were not under {root}; nothing was recorded for "
                  "them (is --checkpoint-root the run's? `pbt-actors verify --checkpoint-root` lists what is absent)")
    return 1 if result.errors or missing else 0


def cmd_pin(args: argparse.Namespace) -> int:
    from pbt_actors.control.retention_rules import META_PINS, read_pins
    from pbt_actors.runtime.controller.pin_requests import apply_requests, requests_folder

    try:
        writer = _open_writer(args.store)
    except StoreLocked:
        return _pin_live(args)
    with writer as store:
        apply_requests(store, requests_folder(Path(args.store).resolve()))  # left by a run that ended since
        trial = store.find_trial(args.trial_id)
        if trial is None:
            raise ConfigError(f"no trial {args.trial_id} in {args.store}")
        pins = set(read_pins(store))
        if args.unpin:
            pins.discard(trial.id)
        else:
            if trial.collected_at is not None:
                raise ConfigError(f"trial {trial.id}'s checkpoint was already collected; replay it from "
                                  "scratch (`pbt-actors replay --trial`)")
            pins.add(trial.id)
        with store.batch():
            store.put_meta(META_PINS, sorted(pins))
    _print_pins(args, trial.id, pins)
    return 0


def _print_pins(args: argparse.Namespace, trial_id: int, pins: set[int] | frozenset[int], by: str = "") -> None:
    if args.json:
        print(json.dumps({"trial": trial_id, "pinned": not args.unpin, "pins": sorted(pins), "live": bool(by)}))
    else:
        print(f"trial {trial_id} {'unpinned' if args.unpin else 'pinned'}{by}; pins: {sorted(pins) or 'none'}")


def _pin_live(args: argparse.Namespace) -> int:
    """The store's controller runs: leave it a request and wait until it applied it."""
    from pbt_actors.cli.summary import open_store_readonly
    from pbt_actors.control.retention_rules import read_pins
    from pbt_actors.runtime.controller.pin_requests import apply_requests, write_request

    def check(store: Any) -> None:
        trial = store.find_trial(args.trial_id)
        if trial is None:
            raise ConfigError(f"no trial {args.trial_id} in {args.store}")
        if not args.unpin and trial.collected_at is not None:
            raise ConfigError(f"trial {trial.id}'s checkpoint was already collected; replay it from "
                              "scratch (`pbt-actors replay --trial`)")

    with open_store_readonly(args.store) as store:
        check(store)
    request = write_request(Path(args.store).resolve(), args.trial_id, not args.unpin)
    start = time.monotonic()
    polls = 0
    while request.exists():  # the controller removes it once applied (before its next retention plan)
        if time.monotonic() - start > args.wait:
            print(f"pbt-actors: the live controller has not applied {request} within {args.wait:g}s; it applies "
                  "it before its next retention pass (or when the run starts again)", file=sys.stderr)
            return 1
        polls += 1
        if polls % 10 == 0:  # about once a second: the run may have ended meanwhile, then apply it here
            try:
                with _open_writer(args.store) as store:
                    apply_requests(store, request.parent)
            except StoreLocked:
                pass
        time.sleep(0.1)
    with open_store_readonly(args.store) as store:
        check(store)  # collected in between: the controller could not pin it
        pins = read_pins(store)
    _print_pins(args, args.trial_id, pins, " by request to the live controller")
    return 0


def _trial_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a trial id") from None
    if value < 1:
        raise argparse.ArgumentTypeError("trial ids start at 1")
    return value


def add_parsers(sub: Any) -> None:
    """Register ``gc`` and ``pin``."""
    gc = sub.add_parser("gc", help="delete checkpoints no trial can need any more (a stopped store)")
    gc.add_argument("--store", required=True, type=arguments.store_path)
    gc.add_argument("--checkpoint-root", default=None, help="checkpoint folder or URL (default <store>/checkpoints)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    gc.add_argument("--force", action="store_true", help="collect even if the run had retention off")
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=cmd_gc)

    pin = sub.add_parser("pin", help="keep a trial's checkpoint forever (or --unpin)")
    pin.add_argument("trial_id", type=_trial_id)
    pin.add_argument("--store", required=True, type=arguments.store_path)
    pin.add_argument("--unpin", action="store_true")
    pin.add_argument("--wait", type=float, default=30.0,
                     help="while a run is live: seconds to wait for its controller to apply the pin (default 30)")
    pin.add_argument("--json", action="store_true")
    pin.set_defaults(func=cmd_pin)
