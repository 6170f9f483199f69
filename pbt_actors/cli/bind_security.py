"""CURVE for the command line: refuse an unencrypted non-loopback bind, load key files, ``keys``.

The transport does the cryptography (``pbt_actors.transport.curve``); this module turns
flags into endpoint options, and says no, loudly, where a run would be open to the network.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import ConfigError


def is_loopback(address: str) -> bool:
    """ipc/inproc, or tcp on 127.x / ::1 / localhost: nothing leaves this machine."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    # ZeroMQ's ``tcp://source;address`` binds the part after the ";": judge that one
    host = address.split("://", 1)[-1].rsplit(";", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def bound_check(insecure: bool, remedy: str) -> Callable[[str], None]:
    """The same rule, applied to the address ZeroMQ actually bound (``ControllerEndpoint``'s
    ``check_bound``: its ``LAST_ENDPOINT``), so no spelling of ``--bind`` can slip past the text
    check (a ``source;address`` pair, a name that resolves elsewhere)."""

    def check(endpoint: str) -> None:
        if not insecure and not is_loopback(endpoint):
            raise ConfigError(f"refusing to serve on {endpoint} (what ZeroMQ bound) without encryption: "
                              f"{remedy}, or --insecure")

    return check


def check_open_bind(bind: str, insecure: bool, remedy: str) -> None:
    """The one rule for every command that binds a controller without CURVE: a non-loopback
    address is refused unless ``insecure``, and then it warns.

    Raises:
        ConfigError: ``bind`` is reachable from the network and ``insecure`` is not set.
    """
    if is_loopback(bind):
        return
    if not insecure:
        raise ConfigError(f"refusing to bind {bind} without encryption: {remedy}, or --insecure")
    print(f"WARNING: {bind} is reachable from the network and NOT encrypted or authenticated (--insecure)",
          file=sys.stderr)


def controller_security(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Endpoint options and a started authenticator (or None) for ``--curve-secret``/
    ``--authorized-keys``; refuses a non-loopback bind without them unless ``--insecure``."""
    secret, keys = getattr(args, "curve_secret", None), getattr(args, "authorized_keys", None)
    if bool(secret) != bool(keys):
        raise ConfigError("CURVE needs both --curve-secret (the controller's key) and --authorized-keys (a folder)")
    if not secret:
        remedy = "give --curve-secret and --authorized-keys (see `pbt-actors keys generate`)"
        check_open_bind(args.bind, getattr(args, "insecure", False), remedy)
        return {"check_bound": bound_check(getattr(args, "insecure", False), remedy)}, None
    import zmq

    from pbt_actors.transport.curve import load_keypair, start_authenticator

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
    from pbt_actors.transport.curve import load_keypair, load_public_key

    options = {"curve_server_key": load_public_key(server), "curve_keypair": load_keypair(secret)}
    return options, ["--curve-server-key", str(Path(server).resolve()), "--curve-secret", str(Path(secret).resolve())]


def cmd_keys(args: argparse.Namespace) -> int:
    from pbt_actors.transport.curve import generate_keypair

    try:
        public, secret = generate_keypair(args.dir, args.name)
    except OSError as exc:
        raise ConfigError(f"cannot write keys into {args.dir}: {exc.strerror or exc}"
                          f"{f' ({exc.filename})' if exc.filename else ''}") from None
    print(f"public key  {public}   (give it to the other side: controller → workers' --curve-server-key;\n"
          f"                       worker → the controller's --authorized-keys folder)")
    print(f"secret key  {secret}   (keep it on this host: --curve-secret)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``keys generate``."""
    keys = sub.add_parser("keys", help="CURVE key pairs for authenticated, encrypted links")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret into DIR")
    gen.add_argument("--dir", required=True)
    gen.add_argument("--name", default=socket.gethostname())
    gen.set_defaults(func=cmd_keys)
