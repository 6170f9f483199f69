"""argparse types for the command line: a bad value is a usage error (exit 2, one line naming
the flag), never a traceback, a hang or a quiet substitution.

``argparse`` turns the ``ArgumentTypeError`` of a type function into
``pbt-actors run: error: argument --workers: ...``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

SEED_LIMIT = 2**64


def seed(text: str) -> int:
    """``--seed``: an integer in [0, 2**64)."""
    value = _int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64-1, got {text}")
    return value


def positive_int(text: str) -> int:
    """``--workers``: at least 1 (leave the flag out for the default)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (leave it out for the default), got {text}")
    return value


def devices(text: str) -> str:
    """``--devices``: all, cpu, or a comma-separated list of GPU indexes."""
    text = text.strip()
    if text in ("all", "cpu"):
        return text
    slots = [d.strip() for d in text.split(",")]
    if not slots or not all(s.isdigit() for s in slots):
        raise argparse.ArgumentTypeError(f"must be all, cpu or a list of GPU indexes like 0,1; got {text!r}")
    return ",".join(slots)


def bind_endpoint(text: str) -> str:
    """``--bind``: ``tcp://HOST:PORT`` (PORT 0-65535, 0 or ``*``: any free port), ``ipc://PATH``
    or ``inproc://NAME``."""
    return _endpoint(text, allow_any_port=True)


def connect_endpoint(text: str) -> str:
    """``--connect``: ``tcp://HOST:PORT`` (PORT 1-65535) or ``ipc://PATH``."""
    return _endpoint(text, allow_any_port=False)


def _endpoint(text: str, *, allow_any_port: bool) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise argparse.ArgumentTypeError(f"must look like tcp://HOST:PORT (or ipc://PATH), got {text!r}")
    if scheme != "tcp":
        return text
    host, colon, port = rest.rpartition(":")
    if not colon or not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"must look like tcp://HOST:PORT, got {text!r}")
    if allow_any_port and port == "*":
        return text
    lowest = 0 if allow_any_port else 1
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"the port of {text!r} must be a number from {lowest} to 65535")
    return text


def port(text: str) -> int:
    """``--port``: 0-65535 (0: any free port); the socket would raise ``OverflowError`` later."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535 (0: any free port), got {text}")
    return value


PATH_MAX_FALLBACK, NAME_MAX_FALLBACK = 4096, 255


def store_path(text: str) -> str:
    """``--store``: a folder path the file system and LMDB can hold, checked before anything
    opens it: UTF-8 text (LMDB encodes the path so; bytes the locale cannot decode are
    refused), no name longer than the file system's ``NAME_MAX``, the whole (with
    ``/data.mdb``) within ``PATH_MAX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} has bytes that are not UTF-8 text; name the store with "
                                         "characters the file system and LMDB both accept") from None
    path = Path(text).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if _is_folder(p)), Path("/"))
    name_max, path_max = _limit(existing, "PC_NAME_MAX", NAME_MAX_FALLBACK), \
        _limit(existing, "PC_PATH_MAX", PATH_MAX_FALLBACK)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise argparse.ArgumentTypeError(f"the name {part[:40]}... is {len(os.fsencode(part))} bytes, longer than "
                                             f"this file system allows ({name_max})")
    if len(os.fsencode(str(path / "data.mdb"))) >= path_max:
        raise argparse.ArgumentTypeError(f"the path is longer than this file system allows ({path_max} bytes)")
    return text


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # the name is too long to even look up
        return False


def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return fallback


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


__all__ = ["SEED_LIMIT", "bind_endpoint", "connect_endpoint", "devices", "port", "positive_int", "seed", "store_path"]
