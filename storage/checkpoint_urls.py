"""From a ``--checkpoint-root`` (a folder or a URL) to its ``CheckpointStore``, and where the
host-local files of that root live.

Layer 2. ``open_store("runs/ckpt")`` is a ``LocalCheckpointStore``; ``open_store("s3://b/p")``
(any ``protocol://`` fsspec knows, except ``file://`` which is a folder) a
``FsspecCheckpointStore`` with the local cache below. A URL is refused when it carries
credentials (``user:password@host``): the root is copied into messages, logs and the trial
store, where secrets must never be.

Environment: ``PBT_ACTORS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/pbt-actors`` or
``~/.cache/pbt-actors``) holds the checkpoint cache (``checkpoints/``) and, for URL roots, the
host state files that a shared folder would otherwise hold (``hosts/``);
``PBT_ACTORS_CACHE_BYTES`` bounds the cache (default 8 GiB; 0 keeps nothing).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from pbt_actors.model.errors import ConfigError
from pbt_actors.storage.checkpoint_cache import CheckpointCache
from pbt_actors.storage.checkpoint_store import CheckpointStore
from pbt_actors.storage.fsspec_checkpoints import FsspecCheckpointStore
from pbt_actors.storage.local_checkpoints import LocalCheckpointStore

CACHE_DIR_ENV = "PBT_ACTORS_CACHE_DIR"
CACHE_BYTES_ENV = "PBT_ACTORS_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 8 * 2**30
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` names a remote store (``proto://...`` other than ``file://``)."""
    match = _URL.match(str(root))
    return match is not None and match.group(1).lower() != "file"


def checked_url(url: str) -> str:
    """``url`` without a trailing slash, refused when it carries credentials or a query.

    Raises:
        ConfigError: ``user[:password]@`` in it, a query or fragment, or no bucket/host.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.username or parts.password:
        raise ConfigError(f"checkpoint root {parts.scheme}://… carries credentials in the URL; give them the "
                          "library's usual way (environment, profile, fsspec config, PBT_ACTORS_STORAGE_OPTIONS)")
    if parts.query or parts.fragment:
        raise ConfigError(f"checkpoint root {url[:200]!r} must not have a query or fragment")
    if not parts.netloc:
        raise ConfigError(f"checkpoint root {url[:200]!r} names no bucket or host")
    return url.rstrip("/")


def normalize_root(root: str | os.PathLike[str]) -> str:
    """A folder as an absolute path, a URL checked (``checked_url``): the form handed to workers."""
    text = str(root)
    if is_url(text):
        return checked_url(text)
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    return str(Path(text).resolve())


def cache_base() -> Path:
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pbt-actors"


def cache_bytes() -> int:
    text = os.environ.get(CACHE_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_BYTES
    if not text.isdigit():
        raise ConfigError(f"{CACHE_BYTES_ENV} must be a whole number of bytes, got {text[:40]!r}")
    return int(text)


def local_state_folder(root: str | os.PathLike[str]) -> Path:
    """The folder for this root's host-local files (host state, running-trial markers): the
    root itself when it is a folder; for a URL, a folder in the cache named after the URL
    (those files are small, frequently rewritten and read by processes of this host)."""
    text = str(root)
    if not is_url(text):
        return Path(text[len("file://"):] if text.lower().startswith("file://") else text)
    url = checked_url(text)
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in url)[:80]
    return cache_base() / "hosts" / f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def open_store(root: str | os.PathLike[str]) -> CheckpointStore:
    """The ``CheckpointStore`` for a folder or URL (see the module docstring).

    Raises:
        ConfigError: a URL with credentials, or a bad cache setting.
    """
    text = str(root)
    if is_url(text):
        url = checked_url(text)
        return FsspecCheckpointStore(url, checkpoint_cache())
    return LocalCheckpointStore(normalize_root(text))


def checkpoint_cache() -> CheckpointCache:
    """The host's cache of a URL root's checkpoints, in ``PBT_ACTORS_CACHE_DIR``.

    Raises:
        ConfigError: the folder cannot be created or written (one line naming the variable).
    """
    folder = cache_base() / "checkpoints"
    try:
        return CheckpointCache(folder, cache_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot use {folder} for the checkpoint cache of a URL checkpoint root: "
                          f"{exc.strerror or exc} (set {CACHE_DIR_ENV} to a writable folder)") from None
