"""``pbt-actors export --format tensorboard --out DIR [--follow]``: the TensorBoard face.

Opens the store read-only (it runs beside a live controller), writes one TensorBoard run per
lineage (``pbt_actors.tools.tensorboard_export``), and with ``--follow`` keeps polling every
``--interval`` seconds, appending trials as they complete, until the run finishes or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import threading

from pbt_actors.cli.output_paths import checked_out, writing
from pbt_actors.cli.summary import open_store_readonly
from pbt_actors.control.progress import run_finished
from pbt_actors.model.errors import ConfigError


def cmd_export_tensorboard(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Write (and with ``args.follow`` keep writing) the event files; ``stop`` ends a follow."""
    from pbt_actors.tools.tensorboard_export import TensorBoardExport

    if args.out in (None, "-"):
        raise ConfigError("export --format tensorboard needs --out DIR (a folder for the event files)")
    stop = stop if stop is not None else threading.Event()
    out = checked_out(args.out, args.store)
    try:
        with open_store_readonly(args.store) as store, writing(args.out), TensorBoardExport(store, out) as export:
            export.poll()
            if args.follow:
                print(f"following {args.store}: {export.trials_written} trials in {len(export.lineages)} "
                      f"lineages so far (Ctrl-C to stop)", file=sys.stderr)
                while not (run_finished(store) and export.pending == 0):
                    if stop.wait(args.interval):
                        break
                    if export.poll():
                        print(f"{export.trials_written} trials in {len(export.lineages)} lineages",
                              file=sys.stderr)
            print(f"{export.trials_written} trials in {len(export.lineages)} lineages written to {out} "
                  f"(tensorboard --logdir {out})", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 0
