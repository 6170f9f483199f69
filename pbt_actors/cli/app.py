"""``pbt-actors``: run, controller, worker, status (and the internal worker-process).

Layer 5. ``run`` is the embedded default: controller in this process, N local worker
processes under a host supervisor, LMDB store in ``./pbt-runs/<experiment>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import ConfigError, PbtError

log = logging.getLogger("pbt_actors.cli.app")


# --- summaries ---------------------------------------------------------------------------------
def store_summary(store: Any, experiment: Any) -> dict[str, Any]:
    """A JSON-ready summary of a store: counts, best trial, progress."""
    from pbt_actors.control.core import META_FINISHED_AT, best_completed
    from pbt_actors.model.records import TrialStatus

    best = best_completed(store, experiment)
    counts = {s.value: store.count(s) for s in TrialStatus}
    return {
        "experiment": experiment.name,
        "policy": experiment.policy,
        "trials": store.count(),
        "by_status": counts,
        "finished": store.get_meta(META_FINISHED_AT) is not None
        or (counts["pending"] == 0 and counts["running"] == 0 and store.count() > 0 and not store.uninitiated()),
        "best": None if best is None else {
            "trial_id": best.id, "generation": best.generation, "final": dict(best.final or {}),
            "hparams": dict(best.hparams), "end_step": best.end_step,
        },
        "max_generation": store.max_generation(),
    }


def _print_summary(summary: dict[str, Any], store_dir: str, elapsed_s: float | None = None) -> None:
    best = summary["best"]
    counts = summary["by_status"]
    print()
    print(f"experiment   {summary['experiment']}  (policy {summary['policy']})")
    print(f"store        {store_dir}")
    print(f"trials       {summary['trials']}  " + "  ".join(f"{k} {v}" for k, v in counts.items() if v))
    if elapsed_s is not None:
        print(f"wall time    {elapsed_s:.1f}s")
    if best is None:
        print("best         (no completed trial yet)")
        return
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in best["final"].items())
    where = f"(generation {best['generation']}, step {best['end_step']})"
    print(f"best         trial {best['trial_id']} {where}  {metrics}")
    width = max(len(k) for k in best["hparams"]) if best["hparams"] else 0
    for key, value in best["hparams"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


class Progress:
    """One status line, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done: int, budget: str, best: str, busy: int, workers: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < 5:
            return
        self.last = now
        shown = f"{done}/{budget}" if not budget.startswith("~") or done < int(budget[1:]) else str(done)
        line = f"trials {shown}  best {best}  workers busy {busy}/{workers}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _budget(experiment: Any) -> str:
    if experiment.max_trials:
        return str(experiment.max_trials)
    per_lineage = -(-experiment.max_steps // experiment.steps_per_trial)
    return f"~{experiment.population * per_lineage}"


# --- security (CURVE) --------------------------------------------------------------------------------
def is_loopback(address: str) -> bool:
    """ipc/inproc, or tcp on 127.x / ::1 / localhost: nothing leaves this machine."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def controller_security(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Endpoint options and a started authenticator (or None) for ``--curve-secret``/
    ``--authorized-keys``; refuses a non-loopback bind without them unless ``--insecure``."""
    secret, keys = getattr(args, "curve_secret", None), getattr(args, "authorized_keys", None)
    if bool(secret) != bool(keys):
        raise ConfigError("CURVE needs both --curve-secret (the controller's key) and --authorized-keys (a folder)")
    if not secret:
        if not is_loopback(args.bind):
            if not getattr(args, "insecure", False):
                raise ConfigError(f"refusing to bind {args.bind} without encryption: give --curve-secret and "
                                  f"--authorized-keys (see `pbt-actors keys generate`), or --insecure")
            print(f"WARNING: {args.bind} is reachable from the network and NOT encrypted or authenticated "
                  f"(--insecure)", file=sys.stderr)
        return {}, None
    import zmq

    from pbt_actors.transport.security import load_keypair, start_authenticator

    public, private = load_keypair(secret)
    authenticator = start_authenticator(zmq.Context.instance(), str(keys))
    return {"curve_secret_key": private, "curve_public_key": public}, authenticator


def worker_security(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Endpoint options for this process and the arguments that pass them to worker processes."""
    server, secret = getattr(args, "curve_server_key", None), getattr(args, "curve_secret", None)
    if not server and not secret:
        return {}, []
    if not (server and secret):
        raise ConfigError("CURVE needs both --curve-server-key (the controller's public key) and --curve-secret")
    from pbt_actors.transport.security import load_keypair, load_public_key

    options = {"curve_server_key": load_public_key(server), "curve_keypair": load_keypair(secret)}
    return options, ["--curve-server-key", str(Path(server).resolve()), "--curve-secret", str(Path(secret).resolve())]


def cmd_keys(args: argparse.Namespace) -> int:
    from pbt_actors.transport.security import generate_keypair

    public, secret = generate_keypair(args.dir, args.name)
    print(f"public key  {public}   (give it to the other side: controller → workers' --curve-server-key;\n"
          f"                       worker → the controller's --authorized-keys folder)")
    print(f"secret key  {secret}   (keep it on this host: --curve-secret)")
    return 0


# --- commands -------------------------------------------------------------------------------------
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


def cmd_run(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.controller import Controller
    from pbt_actors.runtime.launch import load_experiment_file, worker_specs
    from pbt_actors.runtime.host_supervisor import HostSupervisor, host_state_path

    experiment, _ = load_experiment_file(args.experiment)
    if args.seed is not None:
        from dataclasses import replace

        experiment = replace(experiment, seed=args.seed)
    store_dir = Path(args.store or Path("pbt-runs") / experiment.name).resolve()
    if args.policy:
        from dataclasses import replace

        experiment = replace(experiment, policy=args.policy)
    previous = _read_summary(store_dir)
    if previous is not None and previous["finished"]:
        if args.json:
            print(json.dumps({**previous, "store": str(store_dir), "resumed": False, "already_finished": True}))
        else:
            print(f"the store {store_dir} holds a finished run of {experiment.name!r}; nothing to do "
                  f"(use --store to start another)")
            _print_summary(previous, str(store_dir))
        return 0
    started = time.monotonic()
    zygote = _start_zygote(args)  # before Controller.start: the first thread of this process
    try:
        handle = Controller.start(experiment, store_dir, args.bind)
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
    progress = Progress(not args.json and not args.quiet)
    stop = StopOnSignal()
    try:
        while not stop.requested:
            status = handle.status()
            best = "-" if status.best is None else _fmt_metrics(status.best.final)
            progress.update(status.by_status["completed"], _budget(experiment), best, len(status.running_workers),
                            len(specs))
            if status.finished or supervisor.wait(0.5):
                break
    finally:
        progress.close()
        stop.restore()
        interrupted = stop.requested
        if not interrupted:
            supervisor.wait(10)  # let idle workers hear `done` and exit on their own
        try:
            children = supervisor.status()
        except Exception:  # the supervisor actor died: it logged why
            children = []
        supervisor.stop()  # SIGTERM: a worker mid-trial hands back a resume checkpoint if it can
        handle.stop()
        _close_zygote(zygote)
    summary = _read_summary(store_dir) or {}
    supervisor_failures = [c for c in children if c.state == "gave_up"]
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir), "wall_time_s": round(elapsed, 3),
                          "interrupted": interrupted}))
    else:
        _print_summary(summary, str(store_dir), elapsed)
        if interrupted:
            print("interrupted: run `pbt-actors run` again with the same store to resume")
        if supervisor_failures:
            for child in supervisor_failures:
                print(f"worker {child.id} gave up: {child.reason}")
    if interrupted:
        return 130
    return 0 if summary.get("finished") else 1


def _start_zygote(args: argparse.Namespace) -> Any:
    """A ``Zygote`` to fork workers from, or None (``--no-zygote``, or it refused: one warning)."""
    if getattr(args, "no_zygote", False):
        return None
    from pbt_actors.runtime.zygote import Zygote, ZygoteError

    try:
        return Zygote.start()
    except ZygoteError as exc:
        log.warning("%s; starting each worker as a fresh process", exc)
        return None


def _close_zygote(zygote: Any) -> None:
    if zygote is not None:
        zygote.close()


def _fmt_metrics(final: Any) -> str:
    if not final:
        return "-"
    return " ".join(f"{k}={v:.4g}" for k, v in final.items())


def _read_summary(store_dir: Path) -> dict[str, Any] | None:
    if not (store_dir / "data.mdb").exists():
        return None
    from pbt_actors.control.core import META_EXPERIMENT
    from pbt_actors.model.experiment import Experiment
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    with LmdbTrialStore(store_dir, readonly=True) as store:
        raw = store.get_meta(META_EXPERIMENT)
        if raw is None:
            return None
        return store_summary(store, Experiment.from_dict(raw))


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        from pbt_actors.cli.lineage import watch_status

        return watch_status(args.store, args.interval, args.json)
    from pbt_actors.runtime.host_supervisor import describe_host_states, read_host_states

    store_dir = Path(args.store).resolve()
    summary = _read_summary(store_dir)
    if summary is None:
        print(f"no pbt-actors store at {store_dir}", file=sys.stderr)
        return 2
    hosts = read_host_states(Path(args.checkpoint_root) if args.checkpoint_root else store_dir / "checkpoints")
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir), "hosts": hosts}))
    else:
        _print_summary(summary, str(store_dir))
        for line in describe_host_states(hosts):
            print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pbt_actors.tools.verify import verify_store
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    store_dir = Path(args.store).resolve()
    if not (store_dir / "data.mdb").exists():
        print(f"no pbt-actors store at {store_dir}", file=sys.stderr)
        return 2
    root = Path(args.checkpoint_root) if args.checkpoint_root else store_dir / "checkpoints"
    with LmdbTrialStore(store_dir, readonly=True) as store:
        report = verify_store(store, root if root.exists() else None)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(f"{report.trials} trials, {report.checkpoints_checked} checkpoints checked: "
              + ("all invariants hold" if report.ok else f"{len(report.problems)} problem(s)"))
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.ok else 1


def cmd_controller(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.controller import Controller
    from pbt_actors.runtime.launch import load_experiment_file

    experiment, _ = load_experiment_file(args.experiment)
    store_dir = Path(args.store).resolve()
    options, authenticator = controller_security(args)
    try:
        handle = Controller.start(experiment, store_dir, args.bind, endpoint_options=options)
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
    summary = _read_summary(store_dir) or {}
    if args.json:
        print(json.dumps({**summary, "store": str(store_dir)}))
    else:
        _print_summary(summary, str(store_dir))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.launch import load_experiment_file, worker_specs
    from pbt_actors.runtime.host_supervisor import HostSupervisor, host_state_path

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
    from pbt_actors.runtime.launch import EXIT_DONE, EXIT_PREEMPTED, load_experiment_file
    from pbt_actors.runtime.worker import WorkerClient

    _, train = load_experiment_file(args.experiment)
    options, _ = worker_security(args)
    client = WorkerClient(args.connect, train, args.checkpoint_root, worker_id=args.worker_id,
                          endpoint_options=options)
    client.install_sigterm_handler()
    try:
        client.hello()
        client.run()
    finally:
        client.close()
    return EXIT_PREEMPTED if client.preempt.is_set() else EXIT_DONE


# --- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbt-actors", description="Population Based Training as asynchronous trials.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="controller + local workers on this host (the embedded default)")
    run.add_argument("experiment")
    run.add_argument("--workers", type=int, default=None, help="worker processes (default: one per GPU, or CPUs)")
    run.add_argument("--devices", default="all", help="all | cpu | 0,1,...")
    run.add_argument("--store", default=None, help="store folder (default ./pbt-runs/<experiment>)")
    run.add_argument("--checkpoint-root", default=None, help="checkpoint folder (default <store>/checkpoints)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--policy", choices=["initiator", "truncation", "random"], default=None)
    run.add_argument("--bind", default="tcp://127.0.0.1:0")
    run.add_argument("--json", action="store_true", help="print one final JSON object")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    run.set_defaults(func=cmd_run)

    ctl = sub.add_parser("controller", help="the controller alone (multi-host)")
    ctl.add_argument("experiment")
    ctl.add_argument("--store", required=True)
    ctl.add_argument("--bind", required=True, help="e.g. tcp://0.0.0.0:5555")
    ctl.add_argument("--linger", type=float, default=30.0,
                     help="at most this many seconds to keep serving `done` to workers after the end")
    ctl.add_argument("--json", action="store_true")
    ctl.add_argument("--curve-secret", default=None, help="the controller's secret key file (CURVE)")
    ctl.add_argument("--authorized-keys", default=None, help="folder of workers' public keys allowed in")
    ctl.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    ctl.set_defaults(func=cmd_controller)

    wrk = sub.add_parser("worker", help="this host's workers, connecting to a controller")
    wrk.add_argument("experiment")
    wrk.add_argument("--connect", required=True)
    wrk.add_argument("--devices", default="all")
    wrk.add_argument("--workers", type=int, default=None)
    wrk.add_argument("--checkpoint-root", required=True, help="shared folder all hosts see")
    wrk.add_argument("--host-id", default=None, help="prefix of worker ids (default: hostname)")
    wrk.add_argument("--curve-server-key", default=None, help="the controller's public key file (CURVE)")
    wrk.add_argument("--curve-secret", default=None, help="this host's secret key file (CURVE)")
    wrk.add_argument("--no-zygote", action="store_true",
                     help="start each worker as a fresh interpreter instead of forking it from a pre-imported "
                          "zygote (for experiment files that are not fork-safe: CUDA or threads at import)")
    wrk.set_defaults(func=cmd_worker)

    keys = sub.add_parser("keys", help="CURVE key pairs for authenticated, encrypted links")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret into DIR")
    gen.add_argument("--dir", required=True)
    gen.add_argument("--name", default=socket.gethostname())
    gen.set_defaults(func=cmd_keys)

    status = sub.add_parser("status", help="read a live or finished store without disturbing it")
    status.add_argument("--store", required=True)
    status.add_argument("--checkpoint-root", default=None,
                        help="where the hosts publish their workers' state (default <store>/checkpoints)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="a live table that refreshes until the run ends")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    status.set_defaults(func=cmd_status)

    from pbt_actors.cli.lineage import add_lineage_parsers
    from pbt_actors.cli.sim import add_sim_parser

    add_lineage_parsers(sub)
    add_sim_parser(sub)

    ver = sub.add_parser("verify", help="check every store invariant; non-zero exit when one breaks")
    ver.add_argument("--store", required=True)
    ver.add_argument("--checkpoint-root", default=None, help="default <store>/checkpoints")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_verify)

    proc = sub.add_parser("worker-process", help=argparse.SUPPRESS)
    proc.add_argument("experiment")
    proc.add_argument("--connect", required=True)
    proc.add_argument("--worker-id", required=True)
    proc.add_argument("--checkpoint-root", required=True)
    proc.add_argument("--curve-server-key", default=None)
    proc.add_argument("--curve-secret", default=None)
    proc.set_defaults(func=cmd_worker_process)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except PbtError as exc:
        print(f"pbt-actors: {exc}", file=sys.stderr)
        return 2


def console_main() -> None:
    """The ``pbt-actors`` command: ``main``, then leave without the interpreter's teardown.

    Every command has closed what it opened (stores, sockets, actors, workers) when ``main``
    returns; what remains is CPython unloading torch, sklearn and friends module by module,
    which took 1.4-1.8 s here after a ``run`` — longer than a digits trial generation. So we
    flush the streams and the logs and ``os._exit``. (``main`` itself returns normally, for
    callers that embed it.)
    """
    code = main()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
