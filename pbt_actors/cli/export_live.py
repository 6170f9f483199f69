"""``pbt-actors export --format tensorboard|mlflow [--follow]``: the exports into other tools.

Both open the store read-only (they run beside a live controller) and write what is terminal
(``pbt_actors.tools.tensorboard_export``, ``pbt_actors.tools.mlflow_export``). With ``--follow``
they wait for the store if the run has not created it yet (as ``status --watch`` does), then
poll every ``--interval`` seconds, appending trials as they complete, until the run finishes or
Ctrl-C; then the TensorBoard export writes the final lineages and the MLflow export marks the
best trial and ends the search's parent run.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from pbt_actors.cli.output_paths import checked_out, writing
from pbt_actors.cli.summary import open_store_readonly, wait_for_store
from pbt_actors.common.exit_codes import EXIT_SIGINT
from pbt_actors.control.progress import run_finished
from pbt_actors.model.errors import ConfigError


class _Export(Protocol):
    trials_written: int

    @property
    def pending(self) -> int: ...

    def poll(self) -> int: ...


def follow(store: Any, label: str, export: _Export, interval_s: float, stop: threading.Event,
           what: Callable[[], str]) -> bool:
    """Poll ``export`` until the run has finished and nothing is pending; False when ``stop``
    (or Ctrl-C) ended it first. ``what`` says how far it got, for the progress lines."""
    print(f"following {label}: {what()} so far (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while not (run_finished(store) and export.pending == 0):
            if stop.wait(interval_s):
                return False
            if export.poll():
                print(what(), file=sys.stderr, flush=True)
        export.poll()  # what ended between the last poll and the finished check
    except KeyboardInterrupt:
        return False
    return True


def _run(args: argparse.Namespace, stop: threading.Event | None, opened: Callable[[Any], AbstractContextManager[Any]],
         what: Callable[[Any], str], finish: Callable[[Any], str], prepare: Callable[[], Any] | None = None) -> int:
    stop = stop if stop is not None else threading.Event()
    try:
        if prepare is not None:
            prepare()
        if args.follow and not wait_for_store(args.store, args.interval, stop):
            return 0
        with open_store_readonly(args.store) as store, opened(store) as export:
            export.poll()
            complete = True
            if args.follow:
                complete = follow(store, args.store, export, args.interval, stop, lambda: what(export))
            print(finish(export), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return EXIT_SIGINT
    return 0 if complete or not args.follow or stop.is_set() else EXIT_SIGINT


def cmd_export_tensorboard(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Write (and with ``args.follow`` keep writing) the event files; ``stop`` ends a follow."""
    from pbt_actors.tools.tensorboard_export import TensorBoardExport

    if args.out in (None, "-"):
        raise ConfigError("export --format tensorboard needs --out DIR (a folder for the event files)")
    out = checked_out(args.out, args.store)

    def opened(store: Any) -> AbstractContextManager[Any]:
        with writing(args.out):
            return TensorBoardExport(store, out)

    def finish(export: TensorBoardExport) -> str:
        with writing(args.out):
            lineages = export.write_lineages()
        return (f"{export.trials_written} trials (runs under trials/) and {len(lineages)} final lineages "
                f"(runs under lineages/, the best marked -best) written to {out} (tensorboard --logdir {out})")

    return _run(args, stop, opened, lambda e: f"{e.trials_written} trials", finish)


def cmd_export_mlflow(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Send the trials to an MLflow tracking server (and with ``args.follow`` keep sending)."""
    from pbt_actors.tools.mlflow_export import MlflowExport, load_mlflow

    if args.out not in (None, "-"):
        raise ConfigError("export --format mlflow writes to a tracking server: give --tracking-uri URI "
                          "(or set MLFLOW_TRACKING_URI), not --out")

    def opened(store: Any) -> AbstractContextManager[Any]:
        return MlflowExport(store, args.tracking_uri, args.mlflow_experiment)

    def finish(export: MlflowExport) -> str:
        export.finish()
        again = f" ({export.trials_skipped} exported before)" if export.trials_skipped else ""
        best = f", best trial {export.best_trial_id} tagged pbt.best" if export.best_trial_id is not None else ""
        return (f"{export.trials_written} trials written{again} to MLflow at {export.tracking_uri}, experiment "
                f"{export.experiment_name or '-'!s} (parent run {export.parent_run_id or '-'}){best}")

    try:
        return _run(args, stop, opened, lambda e: f"{e.trials_written} trials", finish, prepare=load_mlflow)
    except Exception as exc:  # MLflow's own errors (an unreachable server, a refused request): one line
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        raise ConfigError(f"MLflow at {args.tracking_uri or 'its default tracking URI'}: {str(exc)[:400]} "
                          "(the same command resumes: trials already sent are skipped)") from None
