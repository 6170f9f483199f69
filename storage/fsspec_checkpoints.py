"""``FsspecCheckpointStore``: checkpoints under a URL (``s3://bucket/prefix``, ``gs://...``,
any protocol an installed fsspec implementation provides), for hosts with no shared folder.

Layer 2. Writes: the runtime streams a new checkpoint into a local staging file in the cache
folder while hashing it (never twice in memory), then ``commit`` uploads that file with the
protocol's streaming ``put_file`` (s3fs: multipart above two parts, ``PBT_ACTORS_UPLOAD_PART_BYTES``
each) under a key that carries the sha256. No rename is needed: a multipart upload that never
completed is invisible, and a partial leftover of another backend is unreferenced, because
the worker reports the ``CheckpointRef`` (and the controller records it) only after ``commit``
returned. The uploaded file is then adopted by the local cache, so the next segment of the
same lineage on this host does not download it. Reads: cache hit or download to the cache's
staging folder, then size and sha256 are checked before anything parses the bytes.

Credentials come only from where the ecosystem keeps them: environment (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``), profiles, fsspec's
own config (``~/.config/fsspec/*.json``, ``FSSPEC_S3_*`` variables), or ``storage_options`` as
a JSON object in ``PBT_ACTORS_STORAGE_OPTIONS``. The URL itself, which goes into messages,
logs and the store, must not carry any: ``user:password@`` is refused (``checkpoint_urls``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import posixpath
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pbt_actors.model.errors import CheckpointError, CheckpointWriteError, ConfigError
from pbt_actors.model.records import CheckpointRef
from pbt_actors.storage.checkpoint_cache import CheckpointCache
from pbt_actors.storage.checkpoint_store import (
    HIDDEN_PREFIX,
    CheckpointStore,
    checked_key,
    file_sha256,
    verify_bytes,
)
from pbt_actors.storage.dir_manifest import ManifestFile, remove_tree, total_bytes, verify_tree

OPTIONS_ENV = "PBT_ACTORS_STORAGE_OPTIONS"
PART_BYTES_ENV = "PBT_ACTORS_UPLOAD_PART_BYTES"
DEFAULT_PART_BYTES = 50 * 2**20
"""s3fs's own default part size (measured no slower: benchmarks/checkpoint_io.py)."""
MIN_PART_BYTES = 5 * 2**20
"""S3's smallest allowed part (all but the last)."""
_MULTIPART_PROTOCOLS = ("s3", "s3a")


def storage_options_from_env() -> dict[str, Any]:
    """``PBT_ACTORS_STORAGE_OPTIONS`` as keyword arguments for the fsspec filesystem.

    Raises:
        ConfigError: not a JSON object.
    """
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{OPTIONS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise ConfigError(f"{OPTIONS_ENV} must be a JSON object of fsspec storage options")
    return options


def part_bytes_from_env() -> int:
    """The multipart part size: ``PBT_ACTORS_UPLOAD_PART_BYTES`` (at least 5 MiB), default 50 MiB."""
    text = os.environ.get(PART_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_PART_BYTES
    if not text.isdigit() or int(text) < MIN_PART_BYTES:
        raise ConfigError(f"{PART_BYTES_ENV} must be a whole number of bytes >= {MIN_PART_BYTES}, got {text[:40]!r}")
    return int(text)


class FsspecCheckpointStore(CheckpointStore):
    """Checkpoints under ``url`` through fsspec, with a local ``cache``."""

    def __init__(self, url: str, cache: CheckpointCache, *, options: dict[str, Any] | None = None,
                 part_bytes: int | None = None) -> None:
        import fsspec

        self.root = url
        self.cache = cache
        self._options = storage_options_from_env() if options is None else dict(options)
        self.part_bytes = part_bytes_from_env() if part_bytes is None else part_bytes
        self.protocol = fsspec.core.split_protocol(url)[0] or "file"
        self._base = ""
        self._fs: Any = None
        self._pid = -1

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made in this process (a forked worker makes its own)."""
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            try:
                self._fs, base = fsspec.core.url_to_fs(self.root, **self._options)
            except (ImportError, ValueError) as exc:
                raise ConfigError(f"cannot open checkpoint root {self.root}: {exc}") from exc
            self._base, self._pid = base.rstrip("/"), os.getpid()
        return self._fs

    def object_path(self, relative_uri: str) -> str:
        """The backend's path of ``relative_uri`` (``bucket/prefix/uri``), checked (``checked_key``)."""
        key = checked_key(relative_uri)
        _ = self.fs  # sets self._base
        return f"{self._base}/{key}" if self._base else key

    def staging_path(self, relative_uri: str) -> Path:
        return self.cache.new_temp(posixpath.basename(checked_key(relative_uri)))

    def commit(self, staging: Path, relative_uri: str, size: int, sha256: str) -> None:
        try:
            key = self.object_path(relative_uri)
            fs = self.fs
            try:
                if self._present(key):
                    if self._remote_sha256(key) != sha256:
                        raise CheckpointWriteError(f"checkpoint {self.describe(relative_uri)} exists with different "
                                                   "content: it is never overwritten")
                else:
                    extra = {"chunksize": self.part_bytes} if self.protocol in _MULTIPART_PROTOCOLS else {}
                    fs.put_file(str(staging), key, **extra)
                    fs.invalidate_cache(key)
                    landed = fs.info(key).get("size")
                    if landed != size:
                        raise CheckpointWriteError(f"checkpoint {self.describe(relative_uri)} landed with {landed} "
                                                   f"bytes, wrote {size}")
            except (CheckpointWriteError, CheckpointError):
                raise
            except Exception as exc:  # the backend's own errors (botocore, aiohttp, OSError): all mean "not written"
                raise CheckpointWriteError(f"cannot upload checkpoint {self.describe(relative_uri)}: "
                                           f"{type(exc).__name__}: {exc}") from exc
            self.cache.adopt(staging, sha256)
        finally:
            with contextlib.suppress(OSError):
                staging.unlink()

    def _present(self, key: str) -> bool:
        self.fs.invalidate_cache(key)
        return bool(self.fs.exists(key))

    def _remote_sha256(self, key: str) -> str | None:
        temp = self.cache.new_temp("verify")
        try:
            self.fs.get_file(key, str(temp))
            return file_sha256(temp)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def read_verified(self, ref: CheckpointRef, *, use_cache: bool = True) -> bytes | bytearray:
        cached = self._cached(ref) if use_cache else None
        if cached is not None:
            return cached
        data = self._download(ref)
        if use_cache:
            self._keep(data, ref.sha256)
        return data

    def _download(self, ref: CheckpointRef) -> bytearray:
        """The object's bytes, hashed as they arrive into one buffer of the recorded size (one
        pass, one copy in memory); its size is checked first, so a truncated or swollen object
        is refused before anything is downloaded.

        Raises:
            CheckpointError: missing, unreadable, of another size, or failing its sha256.
        """
        where, key = self.describe(ref.uri), self.object_path(ref.uri)
        try:
            self.fs.invalidate_cache(key)
            size = self.fs.info(key).get("size")
            if size != ref.bytes:
                raise CheckpointError(f"checkpoint {ref.uri} is {size} bytes, expected {ref.bytes} (truncated?) "
                                      f"at {where}")
            buffer = bytearray(ref.bytes)
            view, digest, done = memoryview(buffer), hashlib.sha256(), 0
            with self.fs.open(key, "rb", block_size=self.part_bytes, cache_type="none") as handle:
                while done < ref.bytes:
                    got = handle.readinto(view[done:done + self.part_bytes])
                    if not got:
                        raise CheckpointError(f"checkpoint {ref.uri} ended after {done} bytes, expected "
                                              f"{ref.bytes} (truncated?) at {where}")
                    digest.update(view[done:done + got])
                    done += got
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {ref.uri} is missing (expected at {where})") from None
        except Exception as exc:  # the backend's own errors: the checkpoint cannot be had
            raise CheckpointError(f"checkpoint {ref.uri} cannot be read from {where}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if digest.hexdigest() != ref.sha256:
            raise CheckpointError(f"checkpoint {ref.uri} sha256 is {digest.hexdigest()[:12]}…, expected "
                                  f"{ref.sha256[:12]}… at {where}")
        return buffer  # a bytearray: bytes-like for every reader, and not copied once more

    def _keep(self, data: bytes | bytearray, sha256: str) -> None:
        """Put verified ``data`` into the cache (never raises: a cache is only a speed-up)."""
        if len(data) > self.cache.max_bytes:
            return
        temp = self.cache.new_temp("download")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            return
        self.cache.adopt(temp, sha256)

    def _cached(self, ref: CheckpointRef) -> bytes | bytearray | None:
        """The verified cached bytes of ``ref``; a damaged entry is dropped (then downloaded)."""
        try:
            path = self.cache.lookup(ref.sha256)
        except ValueError:
            return None  # not a sha256: the download's verification says what is wrong
        if path is None:
            return None
        try:
            return verify_bytes(path.read_bytes(), ref, str(path))
        except (OSError, CheckpointError):
            self.cache.discard(ref.sha256)
            return None

    def exists(self, relative_uri: str) -> bool:
        return self._present(self.object_path(relative_uri))

    # --- directory checkpoints: many small objects, so uploads and downloads go through the
    # backend's concurrent batch ``put``/``get`` (s3fs: up to fsspec's gather batch at once);
    # file keys are ``<folder>/<relative path>`` under a folder named by the manifest's sha256,
    # so re-putting a key can only put the same bytes (repairing a damaged object at most)

    def staging_folder(self, relative_uri: str) -> Path:
        return self.cache.new_temp_dir(posixpath.basename(checked_key(relative_uri)))

    def _file_keys(self, folder_uri: str, files: Sequence[ManifestFile]) -> list[str]:
        base = self.object_path(folder_uri)
        return [f"{base}/{f.path}" for f in files]

    def _sizes(self, folder_uri: str) -> dict[str, int | None]:
        """Every object under ``folder_uri`` with its size: one listing (pages of 1,000 on S3)."""
        base = self.object_path(folder_uri)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {path: info.get("size") for path, info in found.items()}

    def commit_folder(self, staging: Path, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> None:
        try:
            keys = self._file_keys(folder_uri, files)
            try:
                if files:
                    extra = {"chunksize": self.part_bytes} if self.protocol in _MULTIPART_PROTOCOLS else {}
                    self.fs.put([str(staging / f.path) for f in files], keys, **extra)
                landed = self._sizes(folder_uri) if files else {}
            except Exception as exc:  # the backend's own errors (botocore, aiohttp, OSError): all mean "not written"
                raise CheckpointWriteError(f"cannot upload checkpoint folder {self.describe(folder_uri)}: "
                                           f"{type(exc).__name__}: {exc}") from exc
            for key, entry in zip(keys, files, strict=True):
                if landed.get(key) != entry.bytes:
                    raise CheckpointWriteError(f"checkpoint folder {self.describe(folder_uri)}: {entry.path} landed "
                                               f"with {landed.get(key)} bytes, wrote {entry.bytes}")
            with contextlib.suppress(OSError):
                self.cache.adopt_dir(staging, cache_key, total_bytes(files))
        finally:
            with contextlib.suppress(OSError):
                remove_tree(staging)

    def _download_folder(self, folder_uri: str, files: Sequence[ManifestFile], target: Path) -> None:
        """Every file into ``target`` (concurrently), then each size and sha256 checked.

        Raises:
            CheckpointError: missing, unreadable, truncated or tampered.
        """
        where = self.describe(folder_uri)
        keys = self._file_keys(folder_uri, files)
        locals_ = [target / f.path for f in files]
        for folder in {p.parent for p in locals_}:
            folder.mkdir(parents=True, exist_ok=True)
        try:
            landed = self._sizes(folder_uri) if files else {}
            for key, entry in zip(keys, files, strict=True):  # one listing refuses what is absent or of another size
                size = landed.get(key)
                if size is None:
                    raise CheckpointError(f"checkpoint {where}: {entry.path} is missing")
                if size != entry.bytes:
                    raise CheckpointError(f"checkpoint {where}: {entry.path} is {size} bytes, expected {entry.bytes} "
                                          "(truncated?)")
            if files:
                self.fs.get(keys, [str(p) for p in locals_])
        except CheckpointError:
            raise
        except FileNotFoundError as exc:
            raise CheckpointError(f"checkpoint folder {where} is incomplete: {exc}") from None
        except Exception as exc:  # the backend's own errors: the checkpoint cannot be had
            raise CheckpointError(f"checkpoint folder {where} cannot be read: {type(exc).__name__}: {exc}") from exc
        verify_tree(target, files, where)

    def fetch_folder(self, folder_uri: str, files: Sequence[ManifestFile], cache_key: str) -> Path:
        size = total_bytes(files)
        try:
            hit = self.cache.lookup_dir(cache_key, size)
        except ValueError:
            hit = None
        if hit is not None:
            try:
                verify_tree(hit, files, str(hit))
                return hit
            except CheckpointError:
                self.cache.discard_dir(cache_key, size)
        temp = self.cache.new_temp_dir("fetch")
        try:
            self._download_folder(folder_uri, files, temp)
            for entry in files:
                os.chmod(temp / entry.path, 0o444)
            try:
                return self.cache.adopt_dir(temp, cache_key, size)
            except OSError as exc:
                raise CheckpointError(f"checkpoint folder {self.describe(folder_uri)} cannot be kept in the host "
                                      f"cache {self.cache.folder}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                remove_tree(temp)

    def verify_folder(self, folder_uri: str, files: Sequence[ManifestFile]) -> None:
        temp = self.cache.new_temp_dir("verify")
        try:
            self._download_folder(folder_uri, files, temp)
        finally:
            with contextlib.suppress(OSError):
                remove_tree(temp)

    def delete_folder(self, folder_uri: str) -> bool:
        base = self.object_path(folder_uri)
        try:
            self.fs.invalidate_cache(base)
            found = list(self.fs.find(base))
            if found:
                self.fs.rm(found)
        except FileNotFoundError:
            return False
        except Exception as exc:  # the backend's own errors
            raise CheckpointWriteError(f"cannot delete checkpoint folder {self.describe(folder_uri)}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.fs.invalidate_cache(base)
        return bool(found)

    def delete(self, relative_uri: str) -> None:
        key = self.object_path(relative_uri)
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass
        except Exception as exc:  # the backend's own errors
            raise CheckpointWriteError(f"cannot delete checkpoint {self.describe(relative_uri)}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.fs.invalidate_cache(key)

    def list_uris(self) -> Iterator[str]:
        fs = self.fs
        fs.invalidate_cache(self._base)
        try:
            found = fs.find(self._base)
        except FileNotFoundError:
            return
        prefix = f"{self._base}/" if self._base else ""
        for path in sorted(found):
            relative = path[len(prefix):] if path.startswith(prefix) else path
            if relative and not any(part.startswith(HIDDEN_PREFIX) for part in relative.split("/")):
                yield relative


CLOSE_TIMEOUT_S = 10.0


def close_filesystem(fs: Any) -> None:
    """Close an async filesystem's HTTP client now, on its own loop, with time to do it.

    s3fs closes its aiobotocore client in a finalizer that waits only 0.1 s on the IO loop;
    on a busy machine that times out and the aiohttp session is left open until the
    interpreter drops it ("Unclosed client session" printed after everything else). A closed
    filesystem reconnects on its next call (s3fs's ``set_session``)."""
    client, loop = getattr(fs, "_s3", None), getattr(fs, "loop", None)
    if client is None or loop is None or not loop.is_running():
        return
    from fsspec.asyn import sync

    with contextlib.suppress(Exception):  # a client the backend already tore down
        sync(loop, client.__aexit__, None, None, None, timeout=CLOSE_TIMEOUT_S)
    fs._s3 = None


def close_filesystems() -> None:
    """Close every s3fs filesystem this process made (fsspec keeps them in its instance
    cache): called at exit, and by whoever stops fsspec's IO loop first (the tests)."""
    s3fs = sys.modules.get("s3fs")
    if s3fs is None or getattr(s3fs.S3FileSystem, "_pid", None) != os.getpid():
        return  # a forked child holds its parent's instances, on a loop that does not run here
    for fs in list(s3fs.S3FileSystem._cache.values()):
        close_filesystem(fs)


atexit.register(close_filesystems)
