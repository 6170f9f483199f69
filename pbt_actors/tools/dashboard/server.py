"""Serving the dashboard: loopback by default, anything else only when asked for.

The dashboard has no authentication (it shows hyperparameters, paths and tracebacks), so it
binds 127.0.0.1 unless ``allow_remote`` is set; then it warns once on stderr. Use an SSH tunnel
(``ssh -L 8265:127.0.0.1:8265 host``) rather than a public bind where you can.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import ConfigError
from pbt_actors.tools.dashboard.index import StoreIndex

DEFAULT_PORT = 8265


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """None for a loopback bind; the warning to print for an allowed remote one.

    Raises:
        ConfigError: a non-loopback bind without ``allow_remote``.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(f"the dashboard binds {host}, which is not a loopback address: it has no "
                          "authentication; pass --allow-remote to do it anyway (or use an SSH tunnel)")
    return (f"WARNING: the dashboard listens on {host}, reachable from other machines, with no "
            "authentication: anyone who can reach it sees the run (hyperparameters, paths, tracebacks)")


def serve(store_dir: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, allow_remote: bool = False,
          refresh_s: float = 1.0, on_ready: Callable[[str], None] | None = None,
          host_states: Callable[[], list[dict[str, Any]]] | None = None) -> None:
    """Open the store read-only and serve the dashboard until interrupted (or ``server.should_exit``)."""
    import uvicorn

    from pbt_actors.storage.lmdb_store import LmdbTrialStore
    from pbt_actors.tools.dashboard.app import create_app

    warning = check_bind(host, allow_remote)
    if warning:
        print(warning, file=sys.stderr)
    path = Path(store_dir).resolve()
    while not (path / "data.mdb").exists():  # a run that starts with --dashboard creates it shortly
        time.sleep(0.2)
    with LmdbTrialStore(path, readonly=True) as store:
        index = StoreIndex(store)
        t0 = time.perf_counter()
        app = create_app(index, path, refresh_s=refresh_s, host_states=host_states)
        sock = bind_socket(host, port)
        bound = sock.getsockname()[0]
        if not allow_remote and not is_loopback(bound):  # judged on what was bound: a name may resolve anywhere
            sock.close()
            check_bind(bound, allow_remote)
        url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/"
        print(f"dashboard: {url}  ({len(index.rows)} trials indexed in {time.perf_counter() - t0:.1f}s; "
              "Ctrl-C to stop)", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready(url)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        server.run(sockets=[sock])


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the URL is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
