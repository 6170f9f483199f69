"""The body of a worker process: one ``WorkerClient`` running trials until the experiment ends.

Layer 4. ``run(config)`` is all a worker process does, however it started: forked by the
zygote (``zygote.py`` calls ``run`` directly), or a fresh interpreter running the CLI's
hidden command ``python -m pbt_actors.cli worker-process EXP --connect ... --worker-id ...
--checkpoint-root ...``, which hands its arguments to ``main`` unparsed. ``config.argv()``
writes those arguments and ``WorkerProcessConfig.parse`` reads them back, so ``launch``
builds the same typed config for both ways.

The process leaves with ``EXIT_DONE`` (0) when the controller said ``done``, with
``EXIT_PREEMPTED`` (3) after a SIGTERM (graceful preemption: the running trial hands back a
resume checkpoint if it can), or with ``EXIT_NO_CONTROLLER`` (69) when no controller answered for
``--controller-timeout`` seconds; a restart rule treats anything else as a crash.

Orphans: the process that supervises workers (``pbt-actors run`` or ``pbt-actors worker``)
holds the write end of a *lifeline* pipe (``Lifeline``, one per supervising process); every
worker gets its read end (fd number in ``PBT_LIFELINE_FD``: passed with ``pass_fds`` to a
fresh interpreter, with ``SCM_RIGHTS`` through the zygote) and watches it from a daemon
thread. End-of-file means the supervisor is gone, even by SIGKILL (the kernel closes its
fds): the worker preempts itself (SIGTERM: the running trial hands back a resume
checkpoint if it can) and leaves with ``EXIT_ORPHANED`` after ``ORPHAN_GRACE_S`` at the
latest. A pipe, not only ``PR_SET_PDEATHSIG``: a forked worker's parent is the zygote, not
its supervisor, and the pipe has no race (a parent already gone reads as end-of-file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pbt_actors.common.exit_codes import (
    EXIT_DONE,
    EXIT_NO_CONTROLLER,
    EXIT_ORPHANED,
    EXIT_PREEMPTED,
    EXIT_WRONG_RUN,
)
from pbt_actors.model.errors import ConfigError
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.runtime.worker.worker_client import ControllerGone, WorkerClient, WrongRun

log = logging.getLogger(__name__)

LIFELINE_ENV = "PBT_LIFELINE_FD"
BACKGROUND_WRITES_ENV = "PBT_ACTORS_BACKGROUND_WRITES"
"""``0``: every checkpoint is written before the trial is reported (docs/design.md §15), e.g. to
compare with the background path (``benchmarks/runtime.py --digits-only N --sync-writes``)."""
ORPHAN_GRACE_S = 3.0


class Lifeline:
    """The supervising process's end of the lifeline pipe (see the module doc): ``read_fd``
    goes to every worker; the write end stays open, unshared, until this process ends."""

    _instance: Lifeline | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both non-inheritable: exec'd children get read_fd via pass_fds
        self.owner = os.getpid()

    @classmethod
    def get(cls) -> Lifeline:
        """This process's lifeline (made on first use; a forked child makes its own)."""
        with cls._guard:
            if cls._instance is None or cls._instance.owner != os.getpid():
                cls._instance = Lifeline()
            return cls._instance

    @classmethod
    def drop_inherited(cls) -> None:
        """In a child forked from the owner (the zygote): close the inherited write end, which
        would keep every worker's lifeline open after the owner died."""
        with cls._guard:
            inherited, cls._instance = cls._instance, None
        if inherited is not None:
            for fd in (inherited.read_fd, inherited.write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


def watch_lifeline(fd: int, grace_s: float = ORPHAN_GRACE_S) -> threading.Thread:
    """Start a daemon thread that preempts this process (SIGTERM to itself) when ``fd``
    reads end-of-file, and ``os._exit(EXIT_ORPHANED)`` ``grace_s`` later if it still runs."""

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while True:
            with contextlib.suppress(InterruptedError):
                if poller.poll():
                    try:
                        if os.read(fd, 1) == b"":  # nobody ever writes: data would be a bug; EOF = gone
                            break
                    except OSError:
                        break
        print(f"pbt-actors: worker pid {os.getpid()}: its supervisor is gone; stopping", file=sys.stderr,
              flush=True)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="pbt-lifeline", daemon=True)
    thread.start()
    return thread


def _watch_inherited_lifeline() -> None:
    raw = os.environ.pop(LIFELINE_ENV, None)
    if raw is None:
        return
    try:
        fd = int(raw)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("ignoring %s=%r: not an open file descriptor", LIFELINE_ENV, raw)
        return
    watch_lifeline(fd)


@dataclass(frozen=True)
class WorkerProcessConfig:
    """What one worker process needs (every path as the process should open it)."""

    experiment: str
    connect: str
    worker_id: str
    checkpoint_root: str
    curve_server_key: str | None = None  # the controller's public key file (CURVE)
    curve_secret: str | None = None  # this host's secret key file (CURVE)
    controller_timeout_s: float = 0.0  # give up after this long without a reply; 0: never

    def argv(self) -> list[str]:
        """The ``worker-process`` arguments that ``parse`` reads back into this config."""
        args = [self.experiment, "--connect", self.connect, "--worker-id", self.worker_id,
                "--checkpoint-root", self.checkpoint_root]
        if self.curve_server_key is not None:
            args += ["--curve-server-key", self.curve_server_key]
        if self.curve_secret is not None:
            args += ["--curve-secret", self.curve_secret]
        if self.controller_timeout_s:
            args += ["--controller-timeout", repr(float(self.controller_timeout_s))]
        return args

    @classmethod
    def parse(cls, argv: Sequence[str]) -> WorkerProcessConfig:
        """Raises ConfigError on arguments ``argv()`` would not write."""
        args = _parser().parse_args([str(a) for a in argv])
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ConfigError(f"worker-process: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pbt-actors worker-process",
                     description="One worker process (started by `pbt-actors run|worker`, not by hand).")
    parser.add_argument("experiment")
    parser.add_argument("--connect", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--checkpoint-root", required=True)
    parser.add_argument("--curve-server-key", default=None)
    parser.add_argument("--curve-secret", default=None)
    parser.add_argument("--controller-timeout", dest="controller_timeout_s", type=_seconds, default=0.0)
    return parser


def _seconds(text: str) -> float:
    """A timeout in seconds: a finite number >= 0 (0: no timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: wait forever), not {text!r}")
    return value


def main(argv: Sequence[str]) -> int:
    """``pbt-actors worker-process ARGS``: parse, then ``run``."""
    return run(WorkerProcessConfig.parse(argv))


def run(config: WorkerProcessConfig) -> int:
    """Import the experiment file, run trials until ``done`` or SIGTERM; the exit code.

    Raises:
        ConfigError: a broken experiment file or half a CURVE key pair.
    """
    _watch_inherited_lifeline()
    experiment, train = load_experiment_file(config.experiment)
    client = WorkerClient(config.connect, train, config.checkpoint_root, worker_id=config.worker_id,
                          endpoint_options=_endpoint_options(config), objective=experiment.objective_.names,
                          controller_timeout_s=config.controller_timeout_s,
                          background_writes=os.environ.get(BACKGROUND_WRITES_ENV, "1").strip() != "0")
    client.install_sigterm_handler()
    try:
        client.hello()
        client.run()
    except WrongRun as exc:
        log.error("worker %s exits: the controller serves another run (%s)", config.worker_id, exc)
        return EXIT_WRONG_RUN
    except ControllerGone:
        pass  # the exit code below says it
    finally:
        client.close()
    if client.controller_gone.is_set():
        refused = client.silence.refused
        if refused:  # it answered: say what was refused, not "no controller"
            print(f"pbt-actors: worker {config.worker_id}: the controller at {config.connect} answered, but "
                  f"its replies were refused for {config.controller_timeout_s:g} s ({refused}); giving up",
                  file=sys.stderr, flush=True)
        else:
            print(f"pbt-actors: worker {config.worker_id}: no controller at {config.connect} for "
                  f"{config.controller_timeout_s:g} s; giving up", file=sys.stderr, flush=True)
        return EXIT_NO_CONTROLLER
    return EXIT_PREEMPTED if client.preempt.is_set() else EXIT_DONE


def _endpoint_options(config: WorkerProcessConfig) -> dict[str, Any]:
    if config.curve_server_key is None and config.curve_secret is None:
        return {}
    if config.curve_server_key is None or config.curve_secret is None:
        raise ConfigError("CURVE needs both --curve-server-key (the controller's public key) and --curve-secret")
    from pbt_actors.transport.curve import load_keypair, load_public_key

    return {"curve_server_key": load_public_key(config.curve_server_key),
            "curve_keypair": load_keypair(config.curve_secret)}


__all__ = ["EXIT_DONE", "EXIT_NO_CONTROLLER", "EXIT_ORPHANED", "EXIT_PREEMPTED", "EXIT_WRONG_RUN", "LIFELINE_ENV",
           "Lifeline", "WorkerProcessConfig", "main", "run", "watch_lifeline"]
