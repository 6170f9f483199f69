"""``pbt-actors``: the parser and the entry point; each command lives in its own module.

| module | commands |
|---|---|
| ``cli.run`` | ``run``, ``controller``, ``worker`` (and the internal ``worker-process``) |
| ``cli.status`` | ``status`` (``--watch``), ``verify`` |
| ``cli.results`` | ``lineage``, ``replay``, ``export``, ``report`` |
| ``cli.sim`` | ``sim`` |
| ``cli.bind_security`` | ``keys`` |
| ``cli.dashboard`` | ``dashboard`` (the live web page; ``run --dashboard``) |
| ``cli.checkpoint_gc`` | ``gc``, ``pin`` |
| ``cli.migrate`` | ``migrate`` (an older store to this build's schema) |

Command modules import their heavy dependencies (torch, ZeroMQ, matplotlib) inside the
command, so ``pbt-actors status`` starts in a fraction of ``run``'s time.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from pbt_actors.cli import bind_security, checkpoint_gc, dashboard, migrate, results, run, sim, status
from pbt_actors.common.exit_codes import (
    EXIT_CHECKPOINT_STORE,
    EXIT_SIGINT,
    EXIT_SIGPIPE,
    EXIT_STORE_FULL,
    EXIT_USAGE,
)
from pbt_actors.model.errors import CheckpointStoreFault, PbtError, StoreFull


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbt-actors", description="Population Based Training as asynchronous trials.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parsers(sub)
    bind_security.add_parsers(sub)
    status.add_parsers(sub)
    results.add_lineage_parsers(sub)
    sim.add_sim_parser(sub)
    dashboard.add_parser(sub)
    checkpoint_gc.add_parsers(sub)
    migrate.add_parser(sub)
    _hide_internal_commands(sub)
    return parser


INTERNAL_COMMANDS = frozenset({"worker-process"})
"""Subcommands the CLI runs itself (a worker host starts them); not for users, so not listed."""


def _hide_internal_commands(sub: argparse._SubParsersAction) -> None:
    """List only the user's commands in ``--help`` and usage lines (argparse would show every choice)."""
    sub.metavar = "{" + ",".join(name for name in sub.choices if name not in INTERNAL_COMMANDS) + "}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except StoreFull as exc:
        print(f"pbt-actors: the store's disk is full ({exc}); free space and run again to resume", file=sys.stderr)
        return EXIT_STORE_FULL
    except CheckpointStoreFault as exc:
        print(f"pbt-actors: {exc}; fix the checkpoint store and run the same command again to resume "
              "(no trial was charged for it)", file=sys.stderr)
        return EXIT_CHECKPOINT_STORE
    except PbtError as exc:
        print(f"pbt-actors: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # a Ctrl-C no command caught (e.g. while importing the experiment)
        print(f"pbt-actors: interrupted{f' {exc}' if str(exc) else ''}", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:  # `pbt-actors export | head`: the reader left; quiet, as Unix tools are
        _discard_stdout()
        return EXIT_SIGPIPE


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's last flush of what is still
    buffered cannot raise BrokenPipeError again (the recipe of Python's ``signal`` docs)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def console_main() -> None:
    """The ``pbt-actors`` command: ``main``, then leave without the interpreter's teardown.

    Every command has closed what it opened (stores, sockets, actors, workers) when ``main``
    returns; what remains is CPython unloading torch, sklearn and friends module by module,
    which took 1.4-1.8 s here after a ``run`` — longer than a digits trial generation. So we
    flush the streams and the logs and ``os._exit``. (``main`` itself returns normally, for
    callers that embed it.)
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the last buffered lines found the reader gone
        _discard_stdout()
        code = code or EXIT_SIGPIPE
    except Exception:  # leaving anyway; nothing left to tell
        pass
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
