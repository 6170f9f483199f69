"""``run``, ``controller`` and ``worker``: the commands that host a run (and the internal
``worker-process``).

``run`` is the embedded default: controller in this process, N local worker processes under a
host supervisor, LMDB store in ``./pbt-runs/<experiment>`` (started and stopped by
``tools/local_run.py``; this module parses, draws the progress and prints). ``controller`` and
``worker`` split the same parts across hosts.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pbt_actors.cli import arguments
from pbt_actors.cli.bind_security import bound_check, check_open_bind, controller_security, worker_security
from pbt_actors.cli.live import LiveProgress
from pbt_actors.cli.summary import budget_text, fmt_map, print_summary, read_no_result_reason, read_summary
from pbt_actors.common.exit_codes import (
    EXIT_CHECKPOINT_STORE,
    EXIT_NO_CONTROLLER,
    EXIT_NO_RESULT,
    EXIT_SIGINT,
    EXIT_SIGTERM,
)

log = logging.getLogger(__name__)


class StopOnSignal:
    """SIGINT/SIGTERM set ``requested`` (and ``signum``) instead of killing the process, so that
    a command can stop its workers and controller cleanly; ``then`` runs in the handler too (it
    must only set flags); ``restore`` puts the old handlers back."""

    def __init__(self, then: Any = None) -> None:
        self.requested = False
        self.signum: int | None = None
        self._then = then
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = self.signum or signum
        if self._then is not None:
            self._then()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def trial_estimate(experiment: Any, status: Any = None) -> int:
    """How many trials will *complete*: the controller's re-estimate from the run's frontier
    (``status.estimate``, ``control/estimate.py``) once it has one, else the guess before the run
    (every slot from step 0 to ``max_steps``, at most ``max_trials``).

    The progress line counts completed trials against it, not all trials: a FAILED or STOPPED
    trial is replaced by a stand-in, so the total created exceeds it by the failures (shown
    apart, ``progress_text``); and it is re-made as slots exploit members behind or ahead of
    them, instead of a fixed guess that runs were seen to overrun by a third."""
    from pbt_actors.control.estimate import initial_estimate

    known = getattr(status, "estimate", None)
    return int(known) if known is not None else initial_estimate(experiment)


def progress_text(by_status: dict[str, int]) -> str:
    """``failed/stopped 3 (replaced)  `` when any trial was lost: those are not in the count."""
    lost = by_status.get("failed", 0) + by_status.get("stopped", 0)
    return f"failed/stopped {lost} (replaced)  " if lost else ""


def finished_store_message(store_dir: Path, previous: dict[str, Any], experiment: Any,
                           args: argparse.Namespace) -> str:
    """What ``run`` says when the store already holds a finished run: it does nothing, so say
    which of the flags given (``--seed``, ``--policy``, ``--budget-steps``) differ from the stored
    run and where a new run would go."""
    held = previous.get("experiment", "?")  # the stored run's name, not the file's
    other = "" if held == experiment.name else f" (not of {experiment.name!r}, the file given)"
    stored_budget = (previous.get("budget") or {}).get("budget_steps")
    flags = [(f"--seed {args.seed}", f"seed {previous.get('seed')}", args.seed, previous.get("seed")),
             (f"--policy {args.policy}", f"policy {previous.get('policy')}", args.policy, previous.get("policy")),
             (f"--budget-steps {args.budget_steps}", f"budget_steps {stored_budget}", args.budget_steps,
              stored_budget)]
    differ = [(given, stored) for given, stored, value, held_value in flags
              if value is not None and value != held_value]
    suggestion = store_dir.parent / f"{store_dir.name}-2"
    text = f"the store {store_dir} holds a finished run of {held!r}{other}; nothing to do"
    if differ:
        text = (f"warning: {', '.join(g for g, _ in differ)} differ(s) from the finished run in {store_dir} "
                f"({', '.join(s for _, s in differ)}): the flags were not applied and nothing was run")
    return f"{text}\nto start a new run, give a new store path, e.g. --store {suggestion}"


def cmd_run(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.host.launch import device_slots, load_experiment_file
    from pbt_actors.tools.local_run import LocalRun, with_overrides

    remedy = ("`run` has no CURVE: keep --bind on 127.0.0.1, or run `pbt-actors controller` with "
              "--curve-secret/--authorized-keys and `pbt-actors worker` per host")
    check_open_bind(args.bind, args.insecure, remedy)
    device_slots(args.devices, args.workers, args.gpus_per_trial, args.workers_per_gpu)  # refused before any start
    experiment, _ = load_experiment_file(args.experiment)
    experiment = with_overrides(experiment, seed=args.seed, policy=args.policy, budget_steps=args.budget_steps,
                                max_trials=args.max_trials)
    store_dir = Path(args.store or Path("pbt-runs") / experiment.name).resolve()
    previous = read_summary(store_dir)
    if previous is not None and previous["finished"]:
        if args.json:
            print(json.dumps({**previous, "store": str(store_dir), "resumed": False, "already_finished": True}))
        else:
            print(finished_store_message(store_dir, previous, experiment, args))
            print_summary(previous, str(store_dir))
        return _outcome(store_dir)
    started = time.monotonic()
    local = LocalRun.start(args.experiment, experiment, store_dir, bind=args.bind, devices=args.devices,
                           workers=args.workers, checkpoint_root=args.checkpoint_root, zygote=not args.no_zygote,
                           endpoint_options={"check_bound": bound_check(args.insecure, remedy)},
                           gpus_per_trial=args.gpus_per_trial, workers_per_gpu=args.workers_per_gpu)
    dashboard = None
    if args.dashboard:  # a child process: web requests never share the controller's interpreter
        from pbt_actors.cli.dashboard import start_dashboard_process

        dashboard = start_dashboard_process(store_dir, args.dashboard_port)
    progress = LiveProgress(not args.json and not args.quiet, "trials completed (~total, re-estimated)")
    stop = StopOnSignal()
    try:
        while not stop.requested:
            status = local.status()
            best = "-" if status.best is None else fmt_map(status.best.final)
            done = status.by_status["completed"]
            estimate = trial_estimate(experiment, status)
            progress.update(done, estimate if done < estimate else None,
                            f"{progress_text(status.by_status)}"
                            f"{budget_text(status.leased_steps, experiment.budget_steps)}best {best}  "
                            f"workers busy {len(status.running_workers)}/{local.worker_count}",
                            final=status.finished)
            if status.finished or local.wait(0.5):
                break
    finally:
        progress.close()
        stop.restore()
        interrupted = stop.requested
        try:
            children = local.stop(interrupted=interrupted)
        finally:
            if dashboard is not None and interrupted:
                from pbt_actors.cli.dashboard import stop_dashboard_process

                stop_dashboard_process(dashboard)
    summary = read_summary(store_dir) or {}
    supervisor_failures = [c for c in children if c.state == "gave_up"]
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir), "wall_time_s": round(elapsed, 3),
                          "interrupted": interrupted}))
    else:
        print_summary(summary, str(store_dir), elapsed)
        if interrupted:
            print("interrupted: run `pbt-actors run` again with the same store to resume")
        if supervisor_failures:
            for child in supervisor_failures:
                print(f"worker {child.id} gave up: {child.reason}")
    if dashboard is not None and not interrupted:
        sys.stdout.flush()
        keep_serving(dashboard)
    if interrupted:
        return EXIT_SIGINT
    return _outcome(store_dir) if summary.get("finished") else EXIT_NO_RESULT


def keep_serving(dashboard: Any) -> None:
    """``run --dashboard`` after the run: the page keeps serving the finished store (it shows
    "finished") until Ctrl-C, then the dashboard stops and ``run`` exits with the run's code."""
    from pbt_actors.cli.dashboard import stop_dashboard_process

    if dashboard.poll() is None:
        print("the run has ended; the dashboard keeps serving the finished store: Ctrl-C to stop it",
              file=sys.stderr, flush=True)
        stop = StopOnSignal()
        try:
            while not stop.requested and dashboard.poll() is None:
                time.sleep(0.2)
        finally:
            stop.restore()
    stop_dashboard_process(dashboard)


def _outcome(store_dir: Path) -> int:
    """The exit code of a finished run: 0 with a result; ``EXIT_NO_RESULT`` and one line saying
    why when no trial completed."""
    reason = read_no_result_reason(store_dir)
    if reason is None:
        return 0
    # a finished store stays finished: after fixing the cause (a command not built, say), the
    # same command only repeats this line, so say how to start again
    print(f"pbt-actors: {reason}; to start again once fixed, remove {store_dir} or pass another --store",
          file=sys.stderr, flush=True)
    return EXIT_NO_RESULT


def cmd_controller(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.host.launch import load_experiment_file
    from pbt_actors.tools.local_run import file_meta, start_controller

    experiment, _ = load_experiment_file(args.experiment)
    store_dir = Path(args.store).resolve()
    options, authenticator = controller_security(args)
    try:
        delete = None
        root = None
        if args.checkpoint_root:  # the hosts' checkpoint root: retention deletes there
            from pbt_actors.runtime.checkpoint_payloads import check_checkpoint_root
            from pbt_actors.runtime.controller.checkpoint_collector import checkpoint_deleter
            from pbt_actors.storage.checkpoint_urls import normalize_root

            root = normalize_root(args.checkpoint_root)
            check_checkpoint_root(root)  # before the first trial
            delete = checkpoint_deleter(root)
        elif experiment.retention.enabled:  # said at start: the disk would fill silently otherwise
            print("pbt-actors controller: no --checkpoint-root: retention is on in the experiment but this "
                  "controller cannot delete any checkpoint (every one is kept); give it the workers' "
                  "--checkpoint-root", file=sys.stderr, flush=True)
        handle = start_controller(experiment, store_dir, args.bind, endpoint_options=options,
                                  checkpoint_delete=delete, meta=file_meta(args.experiment, root))
    except BaseException:
        if authenticator is not None:
            authenticator.stop()
        raise
    stop = StopOnSignal()  # before the line below: whoever reads it may SIGTERM us at once
    print(f"controller for {experiment.name!r} listening on {handle.endpoint} (store {store_dir})", flush=True)
    try:
        while not stop.requested:
            if handle.wait(0.5):
                break
        # keep answering until every worker we know has heard `done` (or the linger ends)
        linger_until = time.monotonic() + args.linger
        while not stop.requested and time.monotonic() < linger_until and handle.peers_not_done():
            handle.bridge.stop_event.wait(0.1)
        if args.serve_finished and not stop.requested:
            # a Kubernetes StatefulSet restarts a controller that exits, finished or not: serve
            # `done` to whoever asks (late worker pods end with exit 0) until told to stop
            print("run finished; answering `done` until SIGTERM (--serve-finished)", flush=True)
            while not stop.requested and not handle.bridge.stop_event.is_set():
                handle.bridge.stop_event.wait(0.5)
    finally:
        handle.stop()
        if authenticator is not None:
            authenticator.stop()
    summary = read_summary(store_dir) or {}
    if summary.get("finished") and root is not None and experiment.retention.enabled:
        _sweep_stale_attempt_files(store_dir, root, experiment.name)
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir)}))
    else:
        print_summary(summary, str(store_dir))
    return _outcome(store_dir) if summary.get("finished") else 0


def _sweep_stale_attempt_files(store_dir: Path, root: str, experiment: str) -> None:
    """At the end of a finished run, the resume checkpoints of completed trials' preempted
    attempts go too (retention's plan knows only final checkpoints; issue 21, item 3). Files
    only: the store is read, not written. A failure is said, not fatal (`gc` retries it)."""
    from pbt_actors.cli.summary import open_store_readonly
    from pbt_actors.runtime.controller.checkpoint_collector import checkpoint_deleter, sweep_stale_attempt_files

    try:
        with open_store_readonly(store_dir) as store:
            done, errors = sweep_stale_attempt_files(store, root, experiment, checkpoint_deleter(root))
    except Exception as exc:  # a checkpoint store that cannot be listed now: the run is still finished
        log.warning("could not delete stale resume checkpoints under %s: %s (`pbt-actors gc` can)", root, exc)
        return
    for line in errors:
        log.warning("retention: %s", line)
    if done:
        log.info("deleted %d resume checkpoint(s) of completed trials' earlier attempts", len(done))


def cmd_worker(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.checkpoint_payloads import check_checkpoint_root
    from pbt_actors.runtime.host.host_state import host_state_path
    from pbt_actors.runtime.host.host_supervisor import HostSupervisor
    from pbt_actors.runtime.host.launch import device_slots, load_experiment_file, worker_specs
    from pbt_actors.runtime.worker.worker_client import unresolvable_host
    from pbt_actors.storage.checkpoint_urls import checkpoint_cache, is_url, normalize_root
    from pbt_actors.tools.experiment_source import experiment_file_record
    from pbt_actors.tools.local_run import close_zygote, start_zygote

    device_slots(args.devices, args.workers, args.gpus_per_trial, args.workers_per_gpu)
    load_experiment_file(args.experiment)  # fail fast on a broken file, before forking workers
    unresolved = unresolvable_host(args.connect)
    if unresolved is not None:  # said now, not only after --controller-timeout (a DNS entry may still come)
        print(f"pbt-actors worker: {unresolved}; retrying until it does", file=sys.stderr, flush=True)
    if is_url(args.checkpoint_root):
        checkpoint_cache()  # an unusable PBT_ACTORS_CACHE_DIR: one line now, not a warning per worker
    options, extra = worker_security(args)
    if args.controller_timeout:
        extra = [*extra, "--controller-timeout", repr(args.controller_timeout)]
    zygote = start_zygote(not args.no_zygote)  # before the supervisor starts threads
    try:
        check_checkpoint_root(normalize_root(args.checkpoint_root))  # a missing bucket: no worker starts
        specs = worker_specs(args.experiment, args.connect, normalize_root(args.checkpoint_root), args.devices,
                             args.workers, prefix=args.host_id, extra_args=extra, zygote=zygote,
                             gpus_per_trial=args.gpus_per_trial, workers_per_gpu=args.workers_per_gpu)
        host = args.host_id or socket.gethostname()
        record = experiment_file_record(args.experiment)
        supervisor = HostSupervisor(specs, controller=args.connect, endpoint_options=options, host=host,
                                    state_path=host_state_path(args.checkpoint_root, host),
                                    stop_grace_s=args.stop_grace, experiment_file=(record["path"], record["sha256"]))
    except BaseException:
        close_zygote(zygote)
        raise
    # a cluster manager's SIGTERM reaches this process and its workers at once: no worker that
    # exits from it may be restarted (begin_stop), each hands its trial back (fail(preempted))
    stop = StopOnSignal(then=supervisor.begin_stop)
    try:
        while not stop.requested and not supervisor.wait(0.5):
            pass
        children = supervisor.status()
    finally:
        supervisor.stop()  # SIGTERM to the workers, SIGKILL after --stop-grace
        close_zygote(zygote)
        stop.restore()
    return _worker_exit_code(args, children, stop)


def _worker_exit_code(args: argparse.Namespace, children: list[Any], stop: StopOnSignal) -> int:
    """``worker``'s exit code (its ``--help`` lists them) and the line that explains it."""

    failures = [c for c in children if c.state == "gave_up"]
    no_controller = [c for c in failures if c.last_exit == EXIT_NO_CONTROLLER]
    if no_controller and not stop.requested:
        print(f"pbt-actors: no controller at {args.connect} for {args.controller_timeout:g} s; giving up",
              file=sys.stderr)
        return EXIT_NO_CONTROLLER
    for child in failures:
        print(f"worker {child.id} gave up: {child.reason}", file=sys.stderr)
    if stop.requested:
        return EXIT_SIGINT if stop.signum == signal.SIGINT else EXIT_SIGTERM
    return 1 if failures else 0


DEFAULT_CONTROLLER_TIMEOUT_S = 300.0
"""``worker --controller-timeout``: long enough for a controller to be rescheduled and restart
on its store (a preempted pod or requeued job), short enough that a host whose controller is
gone for good frees its GPUs within minutes."""
WORKER_EXIT_CODES = f"""exit codes:
  0    the run is done (the controller said so)
  1    a worker slot gave up (it kept crashing, or the controller refused this host)
  2    a problem to fix (the experiment file, an argument)
  {EXIT_NO_CONTROLLER}   no reply from the controller for --controller-timeout seconds (it is gone)
  {EXIT_CHECKPOINT_STORE}   the --checkpoint-root cannot be written (a full disk, a missing bucket)
  130  stopped by SIGINT
  {EXIT_SIGTERM}  stopped by SIGTERM (a cluster's preemption): the running trials were handed back
       (fail(preempted) with a resume checkpoint) and run again elsewhere"""


def _seconds(text: str) -> float:
    """A number of seconds >= 0 (``--controller-timeout``, ``--stop-grace``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def cmd_worker_process(args: argparse.Namespace) -> int:
    """One worker process, as a fresh interpreter: the runtime parses its own arguments."""
    from pbt_actors.runtime.worker.worker_process import main as worker_process_main

    return worker_process_main(args.argv)


def add_slot_flags(parser: argparse.ArgumentParser) -> None:
    """``--gpus-per-trial`` and ``--workers-per-gpu`` (``runtime.host.launch.assign_slots``):
    flags, like ``--devices``, because what a host has is the host's; the same experiment runs
    on an 8-GPU node with ``--gpus-per-trial 2`` and on a laptop without."""
    parser.add_argument("--gpus-per-trial", type=arguments.positive_int, default=1, metavar="N",
                        help="GPUs each worker (trial) gets: CUDA_VISIBLE_DEVICES=a,b for a trial that runs e.g. "
                             "torchrun --nproc-per-node N (default 1)")
    parser.add_argument("--workers-per-gpu", type=arguments.positive_int, default=1, metavar="K",
                        help="worker processes packed on each GPU, for small models (default 1)")


def add_parsers(sub: Any) -> None:
    """Register ``run``, ``controller``, ``worker`` and the internal ``worker-process``."""
    run = sub.add_parser("run", help="controller + local workers on this host (the embedded default)")
    run.add_argument("experiment")
    run.add_argument("--workers", type=arguments.positive_int, default=None,
                     help="worker processes (default: one per GPU, or CPUs)")
    run.add_argument("--devices", type=arguments.devices, default="all", help="all | cpu | 0,1,...")
    add_slot_flags(run)
    run.add_argument("--store", default=None, type=arguments.store_path,
                     help="store folder (default ./pbt-runs/<experiment>)")
    run.add_argument("--checkpoint-root", default=None,
                     help="checkpoint folder or fsspec URL, e.g. s3://bucket/prefix (default <store>/checkpoints)")
    run.add_argument("--seed", type=arguments.seed, default=None,
                     help="the seed every decision's randomness derives from (0 to 2**64-1; default the "
                          "experiment's, 0 unless set). Shown in the summary and --json. The same seed does not "
                          "repeat a run: trials finish in a different order each time")
    run.add_argument("--max-trials", type=arguments.positive_int, default=None,
                     help="cap on the trials created, failed ones included (overrides the experiment's "
                          "max_trials; default none: each of the population's lineages runs to max_steps)")
    run.add_argument("--policy", choices=["initiator", "truncation", "random"], default=None)
    run.add_argument("--budget-steps", type=arguments.positive_int, default=None,
                     help="total training steps the search may spend (counted from trials leased)")
    run.add_argument("--bind", type=arguments.bind_endpoint, default="tcp://127.0.0.1:0")
    run.add_argument("--insecure", action="store_true", help="allow a non-loopback --bind (unencrypted: warns)")
    run.add_argument("--json", action="store_true", help="print one final JSON object")
    run.add_argument("--dashboard", action="store_true",
                     help="serve the live web dashboard on 127.0.0.1 while it runs, and after it ends until Ctrl-C")
    run.add_argument("--dashboard-port", type=arguments.port, default=8265, help="the dashboard's port (default 8265)")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("controller", help="the controller alone (multi-host)")
    ctl.add_argument("experiment")
    ctl.add_argument("--store", required=True, type=arguments.store_path)
    ctl.add_argument("--checkpoint-root", default=None,
                     help="the workers' checkpoint folder or URL: retention deletes unneeded checkpoints there "
                          "(without it every checkpoint is kept; `pbt-actors gc` can collect later)")
    ctl.add_argument("--bind", type=arguments.bind_endpoint, required=True, help="e.g. tcp://0.0.0.0:5555")
    ctl.add_argument("--linger", type=float, default=30.0,
                     help="at most this many seconds to keep serving `done` to workers after the end")
    ctl.add_argument("--serve-finished", action="store_true",
                     help="after the end (or on a finished store) keep answering `done` until SIGTERM instead of "
                          "exiting: for a manager that restarts whatever exits (a Kubernetes StatefulSet)")
    ctl.add_argument("--json", action="store_true")
    ctl.add_argument("--curve-secret", default=None, help="the controller's secret key file (CURVE)")
    ctl.add_argument("--authorized-keys", default=None, help="folder of workers' public keys allowed in")
    ctl.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    ctl.set_defaults(func=cmd_controller)

    wrk = sub.add_parser("worker", help="this host's workers, connecting to a controller",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=WORKER_EXIT_CODES)
    wrk.add_argument("experiment")
    wrk.add_argument("--connect", type=arguments.connect_endpoint, required=True, help="tcp://HOST:PORT")
    wrk.add_argument("--devices", type=arguments.devices, default="all")
    wrk.add_argument("--workers", type=arguments.positive_int, default=None)
    add_slot_flags(wrk)
    wrk.add_argument("--checkpoint-root", required=True,
                     help="where checkpoints live: a folder all hosts share, or an fsspec URL such as "
                          "s3://bucket/prefix or gs://bucket/prefix (credentials from the environment, never the URL)")
    wrk.add_argument("--host-id", default=None, help="prefix of worker ids (default: hostname)")
    wrk.add_argument("--curve-server-key", default=None, help="the controller's public key file (CURVE)")
    wrk.add_argument("--curve-secret", default=None, help="this host's secret key file (CURVE)")
    wrk.add_argument("--controller-timeout", type=_seconds, default=DEFAULT_CONTROLLER_TIMEOUT_S, metavar="SECONDS",
                     help=f"give up after this long without any reply from the controller and exit "
                          f"{EXIT_NO_CONTROLLER} (default {DEFAULT_CONTROLLER_TIMEOUT_S:g}; 0 = wait forever); a "
                          f"controller restarted within it is found again")
    wrk.add_argument("--stop-grace", type=_seconds, default=25.0, metavar="SECONDS",
                     help="on SIGTERM, how long the workers get to checkpoint and hand their trials back before "
                          "SIGKILL (default 25; keep it below the cluster's grace period)")
    wrk.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    wrk.set_defaults(func=cmd_worker)

    # internal: every argument goes to pbt_actors.runtime.worker.worker_process unparsed ("\0": no options here)
    proc = sub.add_parser("worker-process", add_help=False, prefix_chars="\0")
    proc.add_argument("argv", nargs=argparse.REMAINDER)
    proc.set_defaults(func=cmd_worker_process)
