"""What only the LMDB store has at run time: map growth, read-only opening from another
process and unusable folders (its files on disk: ``test_lmdb_layout``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

import lmdb
import pytest

from pbt_actors.model.errors import StoreError, StoreFullRetry, StoreRetry
from pbt_actors.model.records import (
    Measurement,
    TrialStatus,
)
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import TRIAL_ID_COUNTER
from tests.contract.store_helpers import (
    REPO,
    TINY,
    make_spec,
    populate,
    run_batch,
    snapshot,
    start,
)

pytestmark = pytest.mark.timeout(30)  # heavier tests below raise their own limit


# --- map growth ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_map_grows_outside_a_batch(store_path: Path) -> None:
    with LmdbTrialStore(store_path, map_size=TINY, sync=False) as s:
        assert s.map_size == TINY
        for i in range(3000):
            s.create_trial(make_spec(generation=i % 5), float(i))
        for i in range(1, 1001):
            start(s, i)
        assert s.map_size > TINY
        assert s.count() == 3000 and s.count(TrialStatus.RUNNING) == 1000
        assert [t.id for t in s.iter_trials()] == list(range(1, 3001))
    # Reopened with a map smaller than the data: LMDB maps at least the used pages, and the
    # store keeps growing on demand from there.
    with LmdbTrialStore(store_path, map_size=TINY, sync=False) as s:
        assert s.count() == 3000
        for _ in range(1000):
            s.create_trial(make_spec(), 0.0)
        assert s.count() == 4000


@pytest.mark.timeout(60)
def test_map_grows_inside_a_batch_and_the_rerun_succeeds(store_path: Path) -> None:
    with LmdbTrialStore(store_path, map_size=TINY, sync=False) as s:
        s.create_trial(make_spec(), 0.0)
        before = s.map_size

        def body() -> None:
            for i in range(3000):
                s.create_trial(make_spec(generation=1, parent_id=1), float(i))
            s.incr_counter("a")

        with pytest.raises(StoreFullRetry) as info, s.batch():
            body()
        assert isinstance(info.value, StoreRetry) and isinstance(info.value, StoreError)
        assert "re-run" in str(info.value)
        assert s.map_size == 2 * before  # grown before raising
        assert s.count() == 1 and s.counter("a") == 0 and s.children(1) == []  # rolled back
        attempts = 0
        while True:
            attempts += 1
            try:
                with s.batch():
                    body()
                break
            except StoreFullRetry:
                assert s.count() == 1
        assert s.count() == 3001 and s.counter("a") == 1
        assert s.counter(TRIAL_ID_COUNTER) == 3001 and len(s.children(1)) == 3000
        assert s.map_size > before * 2 and attempts >= 1


@pytest.mark.timeout(30)
def test_a_batch_that_hit_a_full_map_stays_rolled_back(store_path: Path) -> None:
    with LmdbTrialStore(store_path, map_size=TINY, sync=False) as s:
        with pytest.raises(StoreFullRetry), s.batch():
            caught = 0
            for i in range(3000):
                try:
                    s.create_trial(make_spec(), float(i))
                except StoreFullRetry:  # swallowed by buggy caller code
                    caught += 1
                    break
            assert caught == 1
            with pytest.raises(StoreFullRetry):  # every later op refuses...
                s.count()
            with pytest.raises(StoreFullRetry):
                s.put_meta("note", 1)
            with pytest.raises(StoreFullRetry), s.batch():  # ...a nested batch too
                pass
        # ...and leaving the block raises too: nothing half-done was committed.
        assert s.count() == 0 and s.get_meta("note") is None
        s.create_trial(make_spec(), 0.0)
        assert s.count() == 1


@pytest.mark.timeout(60)
def test_reader_threads_survive_growth(store_path: Path) -> None:
    """Other threads read while the writer's map doubles under them (the resize gate).

    The readers spin, and py-lmdb releases the GIL around every call, so with the default
    5 ms switch interval the writer would wait for the GIL on each call (minutes in all);
    a short interval keeps the test about the gate, not about GIL convoys.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        _readers_during_growth(store_path)
    finally:
        sys.setswitchinterval(interval)


def _readers_during_growth(store_path: Path) -> None:
    with LmdbTrialStore(store_path, map_size=TINY, sync=False) as s:
        s.create_trial(make_spec(), 0.0)
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: list[int] = []

        def reader() -> None:
            try:
                last = 0
                while not stop.is_set():
                    n = s.count()
                    assert n >= last
                    assert s.find_trial(n) is not None
                    last = n
                seen.append(last)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(300):
                s.create_trial(make_spec(), float(i))
            run_batch(s, lambda: [s.create_trial(make_spec(), 0.0) for _ in range(500)])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert s.map_size >= 8 * TINY and s.count() == 801 and len(seen) == 2


# --- read-only ----------------------------------------------------------------------------------
READER = r"""
import json, sys
from pbt_actors.model.errors import StoreError
from pbt_actors.model.records import Measurement, TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore

store = LmdbTrialStore(sys.argv[1], readonly=True)
resizes = 0
adopt = store._txns._set_mapsize


def counting_resize(size):  # proves the MapResizedError path ran, not just a big mapping
    global resizes
    resizes += 1
    adopt(size)


store._txns._set_mapsize = counting_resize
print(json.dumps({"ready": True, "repr": repr(store)}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "read":
        trials = list(store.iter_trials())
        out = {"count": store.count(), "ids": [t.id for t in trials],
               "counts": {s.value: store.count(s) for s in TrialStatus},
               "running": store.ids_with_status(TrialStatus.RUNNING),
               "children_of_1": store.children(1), "note": store.get_meta("note"),
               "map_size": store.map_size, "resizes": resizes}
    elif cmd == "spin":  # read while the writer commits, until the target count shows up
        target, last, reads = int(args[0]), 0, 0
        while last < target:
            n = store.count()
            assert n >= last, (n, last)
            assert store.get_trial(n).id == n
            last, reads = n, reads + 1
        out = {"count": last, "reads": reads, "map_size": store.map_size, "resizes": resizes}
    elif cmd == "write":
        try:
            store.put_meta("x", 1)
            out = {"error": None}
        except StoreError as exc:
            out = {"error": type(exc).__name__}
    else:
        break
    print(json.dumps(out), flush=True)
store.close()
"""


class Reader:
    """A read-only store in another process, answering one JSON line per command."""

    def __init__(self, path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(path)], cwd=REPO, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.hello = self.receive()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"reader died: {self.proc.stderr.read()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> dict[str, Any]:
        self.send(command)
        return self.receive()

    def close(self) -> int:
        with suppress(OSError):  # already gone: its exit code tells
            self.send("quit")
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.mark.timeout(90)
def test_a_readonly_process_reads_while_the_writer_commits(store_path: Path) -> None:
    writer = LmdbTrialStore(store_path, map_size=TINY, sync=False)
    writer.create_trial(make_spec(), 0.0)
    reader = Reader(store_path)
    try:
        assert str(store_path) in reader.hello["repr"]
        for round_ in range(4):
            run_batch(writer, lambda: [writer.create_trial(make_spec(1, parent_id=1), 0.0)
                                       for _ in range(300)])
            start(writer, round_ + 2)
            writer.put_meta("note", round_)
            seen = reader.ask("read")
            n = writer.count()
            assert seen["count"] == n and seen["ids"] == list(range(1, n + 1))
            assert seen["counts"] == {s.value: writer.count(s) for s in TrialStatus}
            assert seen["running"] == writer.ids_with_status(TrialStatus.RUNNING)
            assert seen["children_of_1"] == writer.children(1)
            assert seen["note"] == round_
        assert writer.map_size > TINY
        assert seen["map_size"] == writer.map_size and seen["resizes"] >= 1  # followed growth
        # An open batch is invisible to the reader until it commits.
        with writer.batch():
            for _ in range(5):
                writer.create_trial(make_spec(), 0.0)
            assert reader.ask("read")["count"] == n
        assert reader.ask("read")["count"] == n + 5
        # Truly concurrent: the reader spins on count() while the writer commits and grows.
        target = n + 5 + 2000
        reader.send(f"spin {target}")
        for i in range(2000):
            writer.create_trial(make_spec(), float(i))
        spun = reader.receive()
        assert spun["count"] == target and spun["reads"] >= 1
        # LMDB tells a reader the map grew only when the pages in use pass its own map (a write
        # that grew the map and then fit in the old size, reusing freed pages, leaves it as it
        # was): the reader follows whenever it must, never past the writer
        assert spun["map_size"] <= writer.map_size
        assert spun["resizes"] > seen["resizes"]
        assert reader.ask("write") == {"error": "StoreError"}
    finally:
        code = reader.close()
        writer.close()
    assert code == 0


def test_readonly_refuses_every_write(store_path: Path) -> None:
    with LmdbTrialStore(store_path) as s:
        populate(s)
        before = snapshot(s)
    with LmdbTrialStore(store_path, readonly=True) as ro:
        assert ro.readonly and snapshot(ro) == before
        t = ro.get_trial(1)
        assert ro.get_trial(4).status is TrialStatus.RUNNING
        writes = [
            lambda: ro.put_meta("note", 1),
            lambda: ro.incr_counter("a"),
            lambda: ro.create_trial(make_spec(), 0.0),
            lambda: ro.transition(1, t.status, t.attempt, t.evolve(initiated=True)),
            lambda: ro.transition(-1, t.status, t.attempt, t.evolve(id=-1)),
            lambda: ro.delete_checkpoint(2),
            lambda: ro.delete_checkpoint(-2),
            lambda: ro.record_measurement(4, 1, Measurement(5, {"loss": 1.0})),
        ]
        for write in writes:
            with pytest.raises(StoreError, match="read-only"):
                write()
        with pytest.raises(StoreError, match="read-only"), ro.batch():
            pass
        assert snapshot(ro) == before


def test_readonly_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no pbt-actors store"):
        LmdbTrialStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()  # a reader creates nothing
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no pbt-actors store"):
        LmdbTrialStore(tmp_path / "empty", readonly=True)
    other = tmp_path / "other"  # an LMDB environment, but not ours
    env = lmdb.open(str(other), max_dbs=2)
    env.close()
    with pytest.raises(StoreError, match="no pbt-actors store"):
        LmdbTrialStore(other, readonly=True)


def test_opening_a_store_twice_in_one_process_is_a_clear_error(
        store: LmdbTrialStore, store_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        LmdbTrialStore(store_path, readonly=True)
    assert store.count() == 0  # the first one still works


# --- unusable folders ------------------------------------------------------------------------------
def test_a_store_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create"):
        LmdbTrialStore(tmp_path / "afile" / "store")


def test_an_unwritable_folder_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file fails for root too.
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "store"
        with pytest.raises(StoreError):
            LmdbTrialStore(target)
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError):
            LmdbTrialStore(locked / "store")  # cannot create the folder
        with pytest.raises(StoreError, match="not writable"):
            LmdbTrialStore(locked)  # exists, but no room for data.mdb
    finally:
        locked.chmod(0o700)


