"""``run``, ``controller`` and ``worker``: the commands that host a run (and the internal
``worker-process``).

``run`` is the embedded default: controller in this process, N local worker processes under a
host supervisor, LMDB store in ``./pbt-runs/<experiment>``. ``controller`` and ``worker`` split
the same parts across hosts.
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
from pbt_actors.cli.live import LiveProgress
from pbt_actors.cli.security import check_open_bind, controller_security, worker_security
from pbt_actors.cli.summary import fmt_map, print_summary, read_summary

log = logging.getLogger(__name__)


class StopOnSignal:
    """SIGINT/SIGTERM set ``requested`` instead of killing the process, so that a command can
    stop its workers and controller cleanly; ``restore`` puts the old handlers back."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def trial_estimate(experiment: Any) -> int | None:
    """How many trials the run will take: ``max_trials``, else one per trial-length of every
    lineage (an estimate: failures, retries and stops change it; shown only while not passed)."""
    if experiment.max_trials:
        return int(experiment.max_trials)
    per_lineage = -(-experiment.max_steps // experiment.steps_per_trial)
    return int(experiment.population * per_lineage)


def cmd_run(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.controller import Controller
    from pbt_actors.runtime.host_supervisor import HostSupervisor, host_state_path
    from pbt_actors.runtime.launch import device_slots, load_experiment_file, worker_specs

    check_open_bind(args.bind, args.insecure, "`run` has no CURVE: keep --bind on 127.0.0.1, or run "
                    "`pbt-actors controller` with --curve-secret/--authorized-keys and `pbt-actors worker` per host")
    device_slots(args.devices, args.workers)  # a GPU that is not there: refused before anything starts
    experiment, _ = load_experiment_file(args.experiment)
    if args.seed is not None:
        from dataclasses import replace

        experiment = replace(experiment, seed=args.seed)
    store_dir = Path(args.store or Path("pbt-runs") / experiment.name).resolve()
    if args.policy:
        from dataclasses import replace

        experiment = replace(experiment, policy=args.policy)
    previous = read_summary(store_dir)
    if previous is not None and previous["finished"]:
        if args.json:
            print(json.dumps({**previous, "store": str(store_dir), "resumed": False, "already_finished": True}))
        else:
            held = previous.get("experiment", "?")  # the stored run's name, not the file's
            other = "" if held == experiment.name else f" (not of {experiment.name!r}, the file given)"
            print(f"the store {store_dir} holds a finished run of {held!r}{other}; nothing to do "
                  f"(use --store to start another)")
            print_summary(previous, str(store_dir))
        return 0
    started = time.monotonic()
    zygote = _start_zygote(args)  # before Controller.start: the first thread of this process
    try:
        handle = _start_controller(Controller, experiment, store_dir, args.bind)
    except BaseException:
        _close_zygote(zygote)
        raise
    try:
        checkpoint_root = str(Path(args.checkpoint_root or store_dir / "checkpoints").resolve())
        specs = worker_specs(args.experiment, handle.endpoint, checkpoint_root, args.devices, args.workers,
                             log_dir=str(store_dir / "logs"), zygote=zygote)
        host = socket.gethostname()
        supervisor = HostSupervisor(specs, controller=handle.endpoint, host=host,
                                    state_path=host_state_path(checkpoint_root, host))
    except BaseException:
        handle.stop()
        _close_zygote(zygote)
        raise
    progress = LiveProgress(not args.json and not args.quiet, "trials")
    estimate = trial_estimate(experiment)
    stop = StopOnSignal()
    try:
        while not stop.requested:
            status = handle.status()
            best = "-" if status.best is None else fmt_map(status.best.final)
            done = status.by_status["completed"]
            progress.update(done, estimate if estimate is None or done < estimate else None,
                            f"best {best}  workers busy {len(status.running_workers)}/{len(specs)}",
                            final=status.finished)
            if status.finished or supervisor.wait(0.5):
                break
    finally:
        progress.close()
        stop.restore()
        interrupted = stop.requested
        if not interrupted and handle.fatal is None:  # (fatal: no `done` will come; StoreFull propagates)
            supervisor.wait(10)  # let idle workers hear `done` and exit on their own
        try:
            children = supervisor.status()
        except Exception:  # the supervisor actor died: it logged why
            children = []
        supervisor.stop()  # SIGTERM: a worker mid-trial hands back a resume checkpoint if it can
        handle.stop()
        _close_zygote(zygote)
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
    if interrupted:
        return 130
    return 0 if summary.get("finished") else 1


def _start_controller(controller: Any, experiment: Any, store_dir: Path, bind: str, **options: Any) -> Any:
    """``Controller.start``, with an address that cannot be bound as a ``ConfigError``."""
    import zmq

    from pbt_actors.model.errors import ConfigError

    try:
        return controller.start(experiment, store_dir, bind, **options)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {bind}: {exc.strerror} (is it an address of this machine, and the port "
                          f"free?)") from None


def _start_zygote(args: argparse.Namespace) -> Any:
    """A ``Zygote`` to fork workers from, or None (``--no-zygote``, or it refused: one warning)."""
    if getattr(args, "no_zygote", False):
        return None
    from pbt_actors.model.errors import ZygoteError
    from pbt_actors.runtime.zygote import Zygote

    try:
        return Zygote.start()
    except ZygoteError as exc:
        log.warning("%s; starting each worker as a fresh process", exc)
        return None


def _close_zygote(zygote: Any) -> None:
    if zygote is not None:
        zygote.close()


def cmd_controller(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.controller import Controller
    from pbt_actors.runtime.launch import load_experiment_file

    experiment, _ = load_experiment_file(args.experiment)
    store_dir = Path(args.store).resolve()
    options, authenticator = controller_security(args)
    try:
        handle = _start_controller(Controller, experiment, store_dir, args.bind, endpoint_options=options)
    except BaseException:
        if authenticator is not None:
            authenticator.stop()
        raise
    print(f"controller for {experiment.name!r} listening on {handle.endpoint} (store {store_dir})", flush=True)
    stop = StopOnSignal()
    try:
        while not stop.requested:
            if handle.wait(0.5):
                break
        # keep answering until every worker we know has heard `done` (or the linger ends)
        linger_until = time.monotonic() + args.linger
        while not stop.requested and time.monotonic() < linger_until and handle.peers_not_done():
            handle.bridge.stop_event.wait(0.1)
    finally:
        handle.stop()
        if authenticator is not None:
            authenticator.stop()
    summary = read_summary(store_dir) or {}
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir)}))
    else:
        print_summary(summary, str(store_dir))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.host_supervisor import HostSupervisor, host_state_path
    from pbt_actors.runtime.launch import device_slots, load_experiment_file, worker_specs

    device_slots(args.devices, args.workers)
    load_experiment_file(args.experiment)  # fail fast on a broken file, before forking workers
    options, extra = worker_security(args)
    zygote = _start_zygote(args)  # before the supervisor starts threads
    try:
        specs = worker_specs(args.experiment, args.connect, str(Path(args.checkpoint_root).resolve()), args.devices,
                             args.workers, prefix=args.host_id, extra_args=extra, zygote=zygote)
        host = args.host_id or socket.gethostname()
        supervisor = HostSupervisor(specs, controller=args.connect, endpoint_options=options, host=host,
                                    state_path=host_state_path(args.checkpoint_root, host))
    except BaseException:
        _close_zygote(zygote)
        raise
    stop = StopOnSignal()
    try:
        while not stop.requested and not supervisor.wait(0.5):
            pass
        failures = [c for c in supervisor.status() if c.state == "gave_up"]
    finally:
        supervisor.stop()
        _close_zygote(zygote)
    for child in failures:
        print(f"worker {child.id} gave up: {child.reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_worker_process(args: argparse.Namespace) -> int:
    """One worker process, as a fresh interpreter: the runtime parses its own arguments."""
    from pbt_actors.runtime.worker_process import main as worker_process_main

    return worker_process_main(args.argv)


def add_parsers(sub: Any) -> None:
    """Register ``run``, ``controller``, ``worker`` and the internal ``worker-process``."""
    run = sub.add_parser("run", help="controller + local workers on this host (the embedded default)")
    run.add_argument("experiment")
    run.add_argument("--workers", type=arguments.positive_int, default=None,
                     help="worker processes (default: one per GPU, or CPUs)")
    run.add_argument("--devices", type=arguments.devices, default="all", help="all | cpu | 0,1,...")
    run.add_argument("--store", default=None, help="store folder (default ./pbt-runs/<experiment>)")
    run.add_argument("--checkpoint-root", default=None, help="checkpoint folder (default <store>/checkpoints)")
    run.add_argument("--seed", type=arguments.seed, default=None, help="0 to 2**64-1")
    run.add_argument("--policy", choices=["initiator", "truncation", "random"], default=None)
    run.add_argument("--bind", type=arguments.bind_endpoint, default="tcp://127.0.0.1:0")
    run.add_argument("--insecure", action="store_true", help="allow a non-loopback --bind (unencrypted: warns)")
    run.add_argument("--json", action="store_true", help="print one final JSON object")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("controller", help="the controller alone (multi-host)")
    ctl.add_argument("experiment")
    ctl.add_argument("--store", required=True)
    ctl.add_argument("--bind", type=arguments.bind_endpoint, required=True, help="e.g. tcp://0.0.0.0:5555")
    ctl.add_argument("--linger", type=float, default=30.0,
                     help="at most this many seconds to keep serving `done` to workers after the end")
    ctl.add_argument("--json", action="store_true")
    ctl.add_argument("--curve-secret", default=None, help="the controller's secret key file (CURVE)")
    ctl.add_argument("--authorized-keys", default=None, help="folder of workers' public keys allowed in")
    ctl.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    ctl.set_defaults(func=cmd_controller)

    wrk = sub.add_parser("worker", help="this host's workers, connecting to a controller")
    wrk.add_argument("experiment")
    wrk.add_argument("--connect", type=arguments.connect_endpoint, required=True, help="tcp://HOST:PORT")
    wrk.add_argument("--devices", type=arguments.devices, default="all")
    wrk.add_argument("--workers", type=arguments.positive_int, default=None)
    wrk.add_argument("--checkpoint-root", required=True, help="shared folder all hosts see")
    wrk.add_argument("--host-id", default=None, help="prefix of worker ids (default: hostname)")
    wrk.add_argument("--curve-server-key", default=None, help="the controller's public key file (CURVE)")
    wrk.add_argument("--curve-secret", default=None, help="this host's secret key file (CURVE)")
    wrk.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    wrk.set_defaults(func=cmd_worker)

    # internal: every argument goes to pbt_actors.runtime.worker_process unparsed ("\0": no options here)
    proc = sub.add_parser("worker-process", add_help=False, prefix_chars="\0")
    proc.add_argument("argv", nargs=argparse.REMAINDER)
    proc.set_defaults(func=cmd_worker_process)
