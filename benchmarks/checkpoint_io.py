"""Checkpoint transfer throughput to and from an S3-compatible server: our ``CheckpointStore``
against a raw s3fs ``put_file``/``get_file`` of the same bytes, measured in the same run.

Why: a checkpoint store that is much slower than the library it wraps would make object
storage the bottleneck of a multi-host run; issue 11's goal is ours >= 80% of raw s3fs.

What is timed, per size (default 256 MiB and 1 GiB of random bytes in a local file, never
the whole object in this process's memory for the uploads):
* **put, ours**: ``FsspecCheckpointStore.commit`` of the file: the existence check, the
  multipart upload (``PBT_ACTORS_UPLOAD_PART_BYTES``, default 50 MiB parts, as s3fs), the size check
  of what landed, and the adoption of the file into the local cache;
* **put, raw**: ``s3fs.S3FileSystem.put_file`` with its defaults;
* **get, ours**: ``read_verified`` with an empty cache: download to the cache's staging
  folder, the bytes read and their sha256 checked, the file adopted into the cache (what a
  child does before loading its parent);
* **get, raw**: ``get_file`` to a local file.
Raw and ours alternate, ``--repeat`` times; the best of each is reported (least disturbed by
the other processes of a shared machine). The server is moto's standalone server, a
separate process on loopback (``tests/support/s3_server.py``), which holds objects in memory:
each object is deleted right after it was measured.

The other half of issue 11's benchmark, disk held over a long run with retention on and off,
is ``benchmarks/retention_cost.py``.

    python benchmarks/checkpoint_io.py [--sizes-mb 256,1024] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pbt_actors.model.records import CheckpointRef  # noqa: E402
from pbt_actors.storage.checkpoint_cache import CheckpointCache  # noqa: E402
from pbt_actors.storage.fsspec_checkpoints import FsspecCheckpointStore  # noqa: E402
from tests.support.s3_server import pointed_at, running_s3_server  # noqa: E402

BUCKET = "pbt-bench"
MiB = 2**20
CHUNK = 16 * MiB


@dataclass
class Transfer:
    size_mb: int
    put_ours_mb_s: float
    put_raw_mb_s: float
    get_ours_mb_s: float
    get_raw_mb_s: float

    @property
    def put_ratio(self) -> float:
        return self.put_ours_mb_s / self.put_raw_mb_s

    @property
    def get_ratio(self) -> float:
        return self.get_ours_mb_s / self.get_raw_mb_s


def random_file(path: Path, size: int) -> str:
    """``size`` random bytes written in chunks; their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.hexdigest()


def measure(size_mb: int, work: Path, repeat: int) -> Transfer:
    import s3fs

    size = size_mb * MiB
    source = work / f"source-{size_mb}"
    sha = random_file(source, size)
    raw = s3fs.S3FileSystem()
    best = {"put_ours": float("inf"), "put_raw": float("inf"), "get_ours": float("inf"), "get_raw": float("inf")}
    for attempt in range(repeat):
        # raw s3fs
        key = f"{BUCKET}/raw/{size_mb}-{attempt}"
        began = time.perf_counter()
        raw.put_file(str(source), key)
        best["put_raw"] = min(best["put_raw"], time.perf_counter() - began)
        target = work / "raw-download"
        began = time.perf_counter()
        raw.get_file(key, str(target))
        best["get_raw"] = min(best["get_raw"], time.perf_counter() - began)
        assert target.stat().st_size == size
        target.unlink()
        raw.rm_file(key)
        # ours: a writer host and a reader host with separate, empty caches
        writer = FsspecCheckpointStore(f"s3://{BUCKET}/ours-{attempt}", CheckpointCache(work / "cache-w", 4 * size))
        reader = FsspecCheckpointStore(f"s3://{BUCKET}/ours-{attempt}", CheckpointCache(work / "cache-r", 4 * size))
        staging = writer.staging_path(f"exp/c{size_mb}.ckpt")
        shutil.copyfile(source, staging)  # what save_checkpoint leaves there before the upload
        uri = f"exp/c{size_mb}-{sha[:16]}.ckpt"
        began = time.perf_counter()
        writer.commit(staging, uri, size, sha)
        best["put_ours"] = min(best["put_ours"], time.perf_counter() - began)
        began = time.perf_counter()
        data = reader.read_verified(CheckpointRef(uri, size, sha, 1))
        best["get_ours"] = min(best["get_ours"], time.perf_counter() - began)
        assert len(data) == size
        del data
        writer.delete(uri)
        for cache in ("cache-w", "cache-r"):
            shutil.rmtree(work / cache, ignore_errors=True)
    source.unlink()
    return Transfer(size_mb, *(round(size_mb / best[k], 1) for k in ("put_ours", "put_raw", "get_ours", "get_raw")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="256,1024", help="checkpoint sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds per size; the best is kept")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mb.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="pbt-bench-ckpt-") as folder, running_s3_server() as server, \
            pointed_at(server):
        server.make_bucket(BUCKET)
        for size_mb in sizes:
            results.append(measure(size_mb, Path(folder), max(1, args.repeat)))
    if args.json:
        print(json.dumps([{**asdict(r), "put_ratio": round(r.put_ratio, 3), "get_ratio": round(r.get_ratio, 3)}
                          for r in results]))
        return 0
    print("checkpoint transfer to/from moto's S3 server on loopback, MB/s (best of "
          f"{args.repeat}); goal: ours >= 80% of raw s3fs")
    print(f"{'size':>8} {'put ours':>9} {'put raw':>9} {'ratio':>6} {'get ours':>9} {'get raw':>9} {'ratio':>6}")
    for r in results:
        print(f"{r.size_mb:>6}MB {r.put_ours_mb_s:>9} {r.put_raw_mb_s:>9} {r.put_ratio:>6.0%} "
              f"{r.get_ours_mb_s:>9} {r.get_raw_mb_s:>9} {r.get_ratio:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
