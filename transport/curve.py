"""CURVE keys and the ZAP authenticator for the controller's ROUTER (DEALER clients).

Layer 2. Key files are ZeroMQ's own certificate format (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key (safe to copy into an authorised-keys folder) and
``NAME.key_secret`` holds both keys (keep it private; written with mode 0600).

Typical setup::

    server_public, server_secret = load_keypair(keys / "controller.key_secret")
    auth = start_authenticator(context, keys / "authorized")   # folder of clients' *.key
    ControllerEndpoint("tcp://*:5555", context=context,
                       curve_secret_key=server_secret, curve_public_key=server_public)
    ...
    auth.stop()

    WorkerEndpoint("tcp://host:5555", "w1", curve_server_key=load_public_key(keys / "controller.key"),
                   curve_keypair=load_keypair(keys / "worker.key_secret"))

The authenticator applies to every CURVE socket of ``context``: a client whose public key is
not in the folder is refused during the handshake and simply never gets through (ZeroMQ
reports nothing to it). CURVE works over ``tcp://`` (and ``ipc://``) only.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def generate_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a new CURVE keypair as ``directory/name.key`` and ``directory/name.key_secret``.

    Returns ``(public_file, secret_file)``. Creates ``directory`` if needed; the secret file
    is made readable by its owner only.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(folder, name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load_keypair(secret_file: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public_key, secret_key)`` (Z85 bytes, as ``zmq.curve_keypair()`` orders them).

    Raises:
        ValueError: the file holds no secret key (e.g. a ``.key`` public file was given).
    """
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise ValueError(f"{os.fspath(secret_file)} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(key_file: str | os.PathLike[str]) -> bytes:
    """The public key (Z85 bytes) of a ``.key`` or ``.key_secret`` file."""
    public, _ = zmq.auth.load_certificate(key_file)
    return bytes(public)


def start_authenticator(context: zmq.Context, public_keys_dir: str | os.PathLike[str]) -> ThreadAuthenticator:
    """Start a ZAP handler on ``context`` that admits CURVE clients whose public key is a
    ``*.key`` file in ``public_keys_dir``; everyone else is refused. The caller owns it and
    calls ``stop()``; call ``configure_curve(domain="*", location=...)`` again on it after the
    folder changes.
    """
    folder = Path(public_keys_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"authorised-keys folder {folder} does not exist")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(folder))
    return auth
