"""Directory checkpoints: the manifest, and the local-tree work both stores share.

Layer 2 (imports only the model). A directory checkpoint is a folder of files (what
``save_pretrained``, Lightning or a sharded optimizer write) stored put-once as its files under
``<name>-<sha16>.files/<relative path>`` plus one **manifest** object
``<name>-<sha16>.manifest`` (docs/design.md §8.6). The manifest lists every file's relative
path, size and sha256; its own size and sha256 are the ``CheckpointRef``'s, and ``<sha16>`` is
the manifest's, so the files' folder is named by the content it must hold and two writers of
one checkpoint write the same keys with the same bytes (no remote rename, no overwrite with
other content). The manifest is committed last: a writer that dies before leaves files nobody
references (``pbt-actors gc`` sweeps them).

Safety, both ways: a directory is refused when saving if it holds a symbolic link that leaves
it (never followed), a link to a folder, or anything but regular files and folders; a manifest
is refused when reading if a path is absolute, has ``..``/``.``/empty parts, a backslash or a
NUL, or names one file twice or a file inside another. Bounded: at most ``MAX_FILES`` files
and ``MAX_MANIFEST_BYTES`` of manifest. Empty folders are not stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pbt_actors.model.errors import CheckpointError

FORMAT = "pbt-actors-directory-checkpoint/1"
MAX_FILES = 100_000
"""Files one directory checkpoint may hold: a sanity bound (10,000 is measured routine)."""
MAX_MANIFEST_BYTES = 64 * 2**20
CHUNK = 1 << 20
READ_ONLY = 0o444
"""Stored and fetched files are made read-only: the loaded folder is shared (the local store's
own files, or the host cache), so a trial writing into it by mistake fails loudly."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a directory checkpoint."""

    path: str
    """Relative POSIX path inside the directory (checked: ``checked_relative_path``)."""
    bytes: int
    sha256: str


def checked_relative_path(path: object, where: str = "manifest") -> str:
    """``path`` if it is a clean relative POSIX path that stays inside its folder.

    Raises:
        CheckpointError: not a string, empty, absolute, with ``.``/``..``/empty parts, a
            backslash or a NUL (a manifest from a store is untrusted input).
    """
    if not isinstance(path, str) or not path:
        raise CheckpointError(f"{where}: file path {str(path)[:200]!r} is not a non-empty string")
    parts = path.split("/")
    if path.startswith("/") or "\x00" in path or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{where}: file path {path[:200]!r} is not a clean relative path inside the "
                              "checkpoint directory (absolute, '..', '.', empty part, backslash or NUL)")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{where}: file name {path[:200]!r} is not valid UTF-8 (object stores and the "
                              "manifest need UTF-8 names)") from None
    return path


def encode_manifest(files: Sequence[ManifestFile]) -> bytes:
    """The canonical manifest bytes (sorted by path, compact JSON): the same files always give
    the same bytes, hence the same sha256 and the same keys."""
    rows = [{"path": f.path, "bytes": f.bytes, "sha256": f.sha256} for f in sorted(files, key=lambda f: f.path)]
    return json.dumps({"format": FORMAT, "files": rows}, separators=(",", ":"), ensure_ascii=False).encode()


def decode_manifest(data: bytes | bytearray, where: str) -> list[ManifestFile]:
    """The files a manifest lists, every entry checked.

    Raises:
        CheckpointError: not a manifest, too big, a bad path/size/sha256, duplicates.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{where}: manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: not a directory checkpoint manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), list):
        raise CheckpointError(f"{where}: not a directory checkpoint manifest (expected format {FORMAT!r})")
    rows = doc["files"]
    if len(rows) > MAX_FILES:
        raise CheckpointError(f"{where}: manifest lists {len(rows)} files, more than {MAX_FILES}")
    files = []
    for row in rows:
        if not isinstance(row, dict):
            raise CheckpointError(f"{where}: manifest entry {str(row)[:100]!r} is not an object")
        size, sha = row.get("bytes"), row.get("sha256")
        if type(size) is not int or size < 0:
            raise CheckpointError(f"{where}: manifest entry {str(row)[:100]!r} has no valid size")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise CheckpointError(f"{where}: manifest entry {str(row)[:100]!r} has no valid sha256")
        files.append(ManifestFile(checked_relative_path(row.get("path"), where), size, sha))
    check_layout([f.path for f in files], where)
    return files


def check_layout(paths: Iterable[str], where: str) -> None:
    """No path twice, none a folder of another (``a`` and ``a/b``): the tree can be built.

    Raises:
        CheckpointError: naming the clash.
    """
    seen: set[str] = set()
    folders: set[str] = set()
    for path in paths:
        if path in seen or path in folders:
            raise CheckpointError(f"{where}: {path[:200]!r} appears twice (or as a file and a folder)")
        seen.add(path)
        parts = path.split("/")
        for i in range(1, len(parts)):
            folders.add("/".join(parts[:i]))
    clash = seen & folders
    if clash:
        raise CheckpointError(f"{where}: {sorted(clash)[0][:200]!r} is both a file and a folder")


def scan_directory(local_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(relative path, file)`` for every file under ``local_dir``, sorted, refusing what
    cannot be a checkpoint. A symbolic link to a file inside the directory is stored as that
    file's content; a link that leaves it, a link to a folder, a FIFO, socket or device is
    refused, never followed.

    Raises:
        CheckpointError: not a folder, an unsafe entry, more than ``MAX_FILES`` files.
    """
    base = Path(local_dir)
    try:
        if base.is_symlink() or not base.is_dir():
            raise CheckpointError(f"checkpoint directory {base} is not a folder (or is a symbolic link)")
        real = base.resolve(strict=True)
    except OSError as exc:
        raise CheckpointError(f"checkpoint directory {base} cannot be read: {exc}") from exc
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(base, followlinks=False, onerror=_raise_walk):
        here = Path(folder)
        for name in sorted(dirs):
            if (here / name).is_symlink():
                raise CheckpointError(f"checkpoint directory {base}: {here / name} is a symbolic link to a folder; "
                                      "refused (store the folder itself)")
        for name in files:
            path = here / name
            relative = path.relative_to(base).as_posix()
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    target = path.resolve(strict=True)
                    if not target.is_relative_to(real):
                        raise CheckpointError(f"checkpoint directory {base}: {relative} is a symbolic link to "
                                              f"{os.readlink(path)!r}, outside the directory; refused (never followed)")
                    mode = target.stat().st_mode
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint directory {base}: {relative} is a dangling link or vanished")\
                    from None
            except OSError as exc:
                raise CheckpointError(f"checkpoint directory {base}: {relative} cannot be read: {exc}") from exc
            if not stat.S_ISREG(mode):
                raise CheckpointError(f"checkpoint directory {base}: {relative} is not a regular file; refused")
            checked_relative_path(relative, f"checkpoint directory {base}")
            found.append((relative, path))
            if len(found) > MAX_FILES:
                raise CheckpointError(f"checkpoint directory {base} holds more than {MAX_FILES} files")
    found.sort()
    return found


def _raise_walk(exc: OSError) -> None:
    raise CheckpointError(f"checkpoint directory cannot be read: {exc}")


def copy_tree_hashing(sources: Sequence[tuple[str, Path]], target: Path, *, fsync: bool = False) -> list[ManifestFile]:
    """Copy each source to ``target/<relative path>`` (read-only), hashing as it streams: one
    read of every file, and the copy is the snapshot the manifest describes even if the
    source changes afterwards.

    Raises:
        OSError: reading or writing failed (the caller turns it into its error).
    """
    files = []
    made: set[Path] = set()
    for relative, source in sources:
        dest = target / relative
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        digest, size = hashlib.sha256(), 0
        with open(source, "rb") as src, open(dest, "xb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(dest, READ_ONLY)
        files.append(ManifestFile(relative, size, digest.hexdigest()))
    return files


def verify_tree(folder: Path, files: Sequence[ManifestFile], where: str) -> None:
    """Every file of the manifest is under ``folder`` with its size and sha256.

    Raises:
        CheckpointError: the first missing, truncated or tampered file, saying which.
    """
    for entry in files:
        path = folder / entry.path
        try:
            if path.is_symlink():
                raise CheckpointError(f"checkpoint {where}: {entry.path} is a symbolic link, expected a file")
            size = path.stat().st_size
            if size != entry.bytes:
                raise CheckpointError(f"checkpoint {where}: {entry.path} is {size} bytes, expected {entry.bytes} "
                                      "(truncated?)")
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {where}: {entry.path} is missing") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {where}: {entry.path} cannot be read: {exc}") from exc
        if digest != entry.sha256:
            raise CheckpointError(f"checkpoint {where}: {entry.path} sha256 is {digest[:12]}…, expected "
                                  f"{entry.sha256[:12]}…")


def total_bytes(files: Iterable[ManifestFile]) -> int:
    return sum(f.bytes for f in files)


def remove_tree(folder: Path) -> bool:
    """Remove ``folder`` and everything in it (read-only files included); whether it existed.
    Idempotent: a missing folder is fine."""
    import shutil

    if not folder.exists() and not folder.is_symlink():
        return False
    if folder.is_symlink() or not folder.is_dir():
        with contextlib.suppress(FileNotFoundError):
            folder.unlink()
        return True
    shutil.rmtree(folder, onerror=_ignore_missing)  # onexc is 3.12+
    return True


def _ignore_missing(function: object, path: str, info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]
