"""Durable checkpoint writes off the trial's critical path, and the states a worker keeps in memory.

Layer 4 (docs/design.md §15). A trial's final checkpoint is handed to the ``BackgroundWriter``
as a ``WriteJob``: a generic "make this durable and tell me its ``CheckpointRef``" (a single-file
payload is serialized, hashed, staged and committed; a directory checkpoint can plug in the same
way), run by one thread in submission order while the next trial trains. The trial is reported
*pending* at once and *completed* by a second report once the job is durable (docs/protocol.md
§4): the controller never records, and no child ever meets, a checkpoint that is not in the store.

``StateCache`` keeps the states this worker saved (at most ``keep`` of them, beyond the one
training): when the next trial's parent is one of them, identified by its durable
``CheckpointRef``, ``ctx.load_checkpoint()`` returns that very object (no fetch, no deserialize,
no copy). An entry is handed out once, because the trial that takes it may change it in place;
a second child of the same parent loads it from the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pbt_actors.model.records import CheckpointRef

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 1
"""Writes a worker may have queued or running beyond the one being trained for: one more trial's
end blocks until the oldest is durable, so memory holds at most this many extra states."""


SYNC_BELOW_S = 0.02
"""A final checkpoint whose last write took less than this is written at once (``worth_it``)."""
MAX_PAUSE_S = 2.0
"""The longest a write waits for the next trial to have started (``BackgroundWriter.pause``)."""


class WriteJob:
    """One durable write: ``produce()`` returns the ``CheckpointRef`` (or raises). Thread-safe."""

    def __init__(self, trial_id: int, attempt: int, step: int, produce: Callable[[], CheckpointRef]) -> None:
        self.trial_id, self.attempt, self.step = trial_id, attempt, step
        self._produce = produce
        self._done = threading.Event()
        self._finished = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[WriteJob], None]] = []
        self.ref: CheckpointRef | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        """How long ``produce`` took (serialize, hash, write, upload): for benchmarks and logs."""

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self.ref = self._produce()
        except BaseException as exc:  # reported by ``result``/the callbacks, never lost in a thread
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - started
            self._produce = _spent
            with self._lock:
                self._finished = True
                callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:  # before ``done``: waiters see what the callbacks did
                _call(callback, self)
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> CheckpointRef:
        """The durable reference. Raises: the write's own error; ``TimeoutError``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"checkpoint write of trial {self.trial_id} not durable after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.ref is not None
        return self.ref

    def add_done_callback(self, callback: Callable[[WriteJob], None]) -> None:
        """Call ``callback(job)`` once durable (or failed): on the writer's thread, or at once
        on the caller's when it already is."""
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return
        _call(callback, self)


def _spent() -> CheckpointRef:
    raise RuntimeError("a write job runs once")


def _call(callback: Callable[[WriteJob], None], job: WriteJob) -> None:
    try:
        callback(job)
    except Exception:
        log.exception("a callback of the checkpoint write of trial %d failed", job.trial_id)


class BackgroundWriter:
    """One thread that runs ``WriteJob``s in order; ``submit`` blocks while ``max_pending`` are
    queued (bounded memory: a slow store slows training rather than filling RAM)."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING, name: str = "checkpoint-writer",
                 max_pause_s: float = MAX_PAUSE_S) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.max_pause_s = max_pause_s
        self.recent_s: float | None = None
        """How long the last final checkpoint took to write (in the background or not)."""
        self._go = threading.Event()
        self._go.set()
        self._queue: queue.Queue[WriteJob | None] = queue.Queue(maxsize=max_pending)
        self._jobs: list[WriteJob] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> WriteJob:
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.done]
            self._jobs.append(job)
        self._queue.put(job)
        return job

    def worth_it(self) -> bool:
        """Whether the next final checkpoint should go to the background: not when the last one
        took under ``SYNC_BELOW_S`` (a small state: writing it now costs less than the second
        report and the thread hop, and the trial is reported completed at once)."""
        return self.recent_s is None or self.recent_s >= SYNC_BELOW_S

    def observe(self, seconds: float) -> None:
        self.recent_s = seconds

    def pending(self) -> list[WriteJob]:
        """The jobs not yet durable, oldest first."""
        with self._lock:
            return [j for j in self._jobs if not j.done]

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is done (callbacks included); False on timeout."""
        return all(job.wait(timeout) for job in self.pending())

    def pause(self) -> None:
        """Hold back the next job's start while the worker switches trials (its parent is read and
        deserialized without a write competing for the CPU and the disk), until ``resume`` or
        ``max_pause_s``. A job already running goes on."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def close(self, timeout: float | None = None) -> None:
        self._go.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._go.wait(self.max_pause_s)
            job.run()
            self.recent_s = job.seconds


class StateCache:
    """States this worker saved, by the ``CheckpointRef`` they became; at most ``keep`` held."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = max(0, keep)
        self._states: OrderedDict[CheckpointRef, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def hold(self, job: WriteJob, state: Any) -> None:
        """Keep ``state`` under the reference ``job`` makes durable (nothing if it fails)."""
        if self.keep == 0:
            return

        def store(done: WriteJob) -> None:
            if done.ref is not None:
                self.put(done.ref, state)

        job.add_done_callback(store)

    def put(self, ref: CheckpointRef, state: Any) -> None:
        if self.keep == 0:
            return
        with self._lock:
            self._states[ref] = state
            self._states.move_to_end(ref)
            while len(self._states) > self.keep:
                self._states.popitem(last=False)

    def take(self, ref: CheckpointRef | None) -> tuple[bool, Any]:
        """``(True, state)`` and forget it when ``ref`` is held, else ``(False, None)``."""
        if ref is None:
            return False, None
        with self._lock:
            if ref not in self._states:
                return False, None
            self.hits += 1
            return True, self._states.pop(ref)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)


__all__ = ["DEFAULT_MAX_PENDING", "MAX_PAUSE_S", "SYNC_BELOW_S", "BackgroundWriter", "StateCache", "WriteJob"]
