"""Where a face may write: one check for ``export``, ``report`` and the TensorBoard export.

The faces open the store read-only, but their ``--out`` is a path the user types, and
``export --format csv --out STORE/data.mdb`` once truncated the LMDB file under the live map
(the reader died of SIGBUS and the store was lost). So no face writes inside a store's folder
(its LMDB files, its checkpoints, its host state) or over one of its files through a link;
the only exception is a face's own subfolder there (``report``'s default ``<store>/report``).
An ``--out`` that cannot be created is a one-line error too, not a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pbt_actors.model.errors import ConfigError

STORE_FILES = ("data.mdb", "lock.mdb")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def checked_out(out: str | os.PathLike[str], store: str | os.PathLike[str], *,
                own: str | os.PathLike[str] | None = None) -> Path:
    """``out`` resolved, refused when it lies in ``store``'s folder (except under ``own``, a
    face's own subfolder) or is one of the store's files by another name (a hard link).

    Raises:
        ConfigError: one line naming ``out`` and the store.
    """
    try:
        target = Path(out).expanduser().resolve()
        store_dir = Path(store).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot use --out {out}: {exc}") from None
    allowed = own is not None and _within(target, Path(own).expanduser().resolve())
    if _within(target, store_dir) and not allowed:
        raise ConfigError(f"refusing --out {out}: it lies inside the store {store_dir}, and a face never writes "
                          "there (the store's files would be lost); give a path outside the store's folder")
    for name in STORE_FILES:
        with contextlib.suppress(OSError):
            if os.path.samefile(target, store_dir / name):
                raise ConfigError(f"refusing --out {out}: it is the store's {name} ({store_dir}) by another name")
    return target


@contextlib.contextmanager
def writing(out: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` while creating or writing ``out`` into a one-line ``ConfigError``."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc.strerror or exc}") from None


def make_folder(path: Path, out: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, a failure as one line naming ``--out``."""
    with writing(out):
        path.mkdir(parents=True, exist_ok=True)
    return path
