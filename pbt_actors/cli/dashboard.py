"""``pbt-actors dashboard --store DIR [--port P] [--bind HOST] [--allow-remote]``: the live page.

Reads the store read-only (like ``status``), so it runs beside a live controller, on the same
host or on any host that sees the store's folder. ``run --dashboard`` starts the same server in
a child process next to the run (``start_dashboard_process``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pbt_actors.cli import arguments
from pbt_actors.model.errors import ConfigError

DEFAULT_PORT = 8265  # kept equal to pbt_actors.tools.dashboard.server.DEFAULT_PORT (no heavy import here)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pbt_actors.runtime.host.host_state import read_host_states
    from pbt_actors.tools.dashboard.server import check_bind, serve

    store_dir = Path(args.store).resolve()
    check_bind(args.bind, args.allow_remote)  # refuse before waiting for anything
    if not args.wait and not (store_dir / "data.mdb").exists():
        raise ConfigError(f"no pbt-actors store at {store_dir}")
    root = Path(args.checkpoint_root) if args.checkpoint_root else store_dir / "checkpoints"
    try:
        serve(store_dir, host=args.bind, port=args.port, allow_remote=args.allow_remote, refresh_s=args.refresh,
              host_states=lambda: read_host_states(root))
    except KeyboardInterrupt:
        return 130
    return 0


def start_dashboard_process(store: str | Path, port: int = DEFAULT_PORT, bind: str = "127.0.0.1",
                            allow_remote: bool = False) -> subprocess.Popen[bytes]:
    """``run --dashboard``: the dashboard as a child process (its own interpreter, so the
    controller's threads and GIL never wait on web requests); the caller terminates it."""
    command = [sys.executable, "-m", "pbt_actors.cli", "dashboard", "--store", str(store), "--port", str(port),
               "--bind", bind, "--wait"]
    if allow_remote:
        command.append("--allow-remote")
    return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def add_parser(sub: Any) -> None:
    """Register ``dashboard``."""
    dash = sub.add_parser("dashboard", help="a live web page of a run (reads the store read-only)")
    dash.add_argument("--store", required=True, type=arguments.store_path)
    dash.add_argument("--port", type=arguments.port, default=DEFAULT_PORT,
                      help=f"default {DEFAULT_PORT}; 0 picks a free port")
    dash.add_argument("--bind", default="127.0.0.1", help="address to listen on (default loopback only)")
    dash.add_argument("--allow-remote", action="store_true",
                      help="allow a non-loopback --bind (no authentication: prints a warning)")
    dash.add_argument("--checkpoint-root", default=None,
                      help="where hosts publish worker state (default <store>/checkpoints)")
    dash.add_argument("--refresh", type=float, default=1.0, help="seconds between store reads (default 1)")
    dash.add_argument("--wait", action="store_true", help="wait for the store to appear (run --dashboard uses it)")
    dash.set_defaults(func=cmd_dashboard)


def stop_dashboard_process(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """End a ``start_dashboard_process`` child: SIGTERM (uvicorn exits cleanly), then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace_s)
