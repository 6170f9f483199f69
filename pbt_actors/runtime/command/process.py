"""A command trial's program as a process group: start it, read it, end all of it.

Layer 4 (the shell of ``pbt_actors.runtime.command.trial``). The program runs in its own
session (``start_new_session``: its own process group, out of reach of the terminal's Ctrl-C,
which the worker handles), so that one ``killpg`` ends it together with whatever it forked
(a data loader, ``torchrun``'s workers, a shell's children). On Linux it also gets
``PR_SET_PDEATHSIG`` = SIGKILL: a worker process killed outright (OOM, SIGKILL) cannot leave
its program training on as an orphan.

Memory stays bounded whatever the program prints: stdout is read line by line with a cap on
the line length (``MAX_LINE_CHARS``; a longer line is cut and never a metric line), every
line goes through a bounded queue (a program printing faster than its reports can be
recorded waits on its pipe), and only a tail of each stream is kept (``OutputTail``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from pbt_actors.model.metric_lines import MAX_LINE_CHARS

log = logging.getLogger(__name__)

TAIL_BYTES = 64 * 1024
"""Of each of stdout and stderr, an attempt keeps its last this many bytes."""
QUEUE_LINES = 4096
"""Stdout lines read ahead of the trial thread at most (then the program waits on its pipe)."""
_PR_SET_PDEATHSIG = 1


class OutputTail:
    """The last ``limit`` bytes of a stream, and how many bytes it had in all."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= self.limit:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The kept bytes as text (cut to ``limit``; undecodable bytes replaced)."""
        with self._lock:
            data = b"".join(self._chunks)[-self.limit:]
            cut = self.total > len(data)
        text = data.decode("utf-8", errors="replace")
        return f"[... {self.total - len(data)} earlier bytes not kept]\n{text}" if cut else text

    def last_lines(self, count: int) -> str:
        return "\n".join(self.text().rstrip("\n").splitlines()[-count:])


@dataclass(frozen=True)
class Line:
    """One line of stdout (decoded; ``cut``: longer than ``MAX_LINE_CHARS``, truncated)."""

    text: str
    number: int
    cut: bool = False


class EndOfOutput:
    """Stdout is closed: every process of the group that held it has ended (or closed it)."""


def _pdeathsig() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    prctl = libc.prctl

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_pdeathsig


class ProgramGroup:
    """One started program (its process group); see the module docstring."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str,
                 tail_bytes: int = TAIL_BYTES) -> None:
        self.argv = list(argv)
        self.stdout_tail = OutputTail(tail_bytes)
        self.stderr_tail = OutputTail(tail_bytes)
        self.lines: queue.Queue[Line | EndOfOutput] = queue.Queue(QUEUE_LINES)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env), cwd=cwd, start_new_session=True, close_fds=True,
            preexec_fn=_pdeathsig())  # noqa: PLW1509 (only a prctl: see _pdeathsig)
        self.pgid = self.process.pid  # a session leader leads its group: pgid == pid
        self._exited = False
        self.output_ended = False
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"pbt-cmd-out-{self.pgid}", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"pbt-cmd-err-{self.pgid}", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        number = 0
        cut = False  # inside a line longer than MAX_LINE_CHARS: skip to its end
        try:
            for chunk in _lines(stream):
                self.stdout_tail.add(chunk)
                ends = chunk.endswith(b"\n")
                if not cut:
                    number += 1
                    self.lines.put(Line(chunk.decode("utf-8", errors="replace"), number, cut=not ends))
                cut = not ends
        finally:
            self.lines.put(EndOfOutput())

    def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while True:
            data = stream.read1(TAIL_BYTES) if hasattr(stream, "read1") else stream.read(TAIL_BYTES)
            if not data:
                return
            self.stderr_tail.add(data)

    def read(self, timeout_s: float) -> Line | EndOfOutput | None:
        """The next stdout line, ``EndOfOutput`` (also on every call after it), or None when
        nothing came within ``timeout_s``."""
        if self.output_ended:
            return EndOfOutput()
        try:
            item = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, EndOfOutput):
            self.output_ended = True
        return item

    def exited(self) -> int | None:
        """The program's exit status once it has ended (negative: the signal that ended it),
        else None. When it has, the rest of its group is killed at once, before the program is
        reaped, so that the group id cannot have been reused by then: children it forked and
        left behind (still holding stdout, say) end with it."""
        if self._exited:
            return self.process.returncode
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already (cannot happen here, but then it has ended)
            info = None
            if self.process.poll() is None:
                return None
        else:
            if info is None:
                return None
        self._kill_group(signal.SIGKILL)
        self.process.wait()
        self._exited = True
        return self.process.returncode

    def _kill_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the whole group, SIGKILL to it ``grace_s`` later if the program still
        runs; its exit status."""
        if self.exited() is None:
            self._kill_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.exited() is None:
                time.sleep(0.02)
            if self.exited() is None:
                log.warning("command %s (pid %d) did not end within %.1f s of its SIGTERM; killing its group",
                            self.argv[0], self.pgid, grace_s)
                self._kill_group(signal.SIGKILL)
                self.process.wait()
                self.exited()
        return self.process.returncode

    def close(self, reader_grace_s: float = 2.0) -> None:
        """Kill what is left of the group and let the reader threads finish (a process that
        left the group, e.g. by ``setsid``, may still hold the pipes: not waited for)."""
        if self.exited() is None:
            self._kill_group(signal.SIGKILL)
            self.process.wait()
            self.exited()
        deadline = time.monotonic() + reader_grace_s
        while not self.output_ended and time.monotonic() < deadline:  # unblock a reader waiting on a full queue
            self.read(0.05)
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """``stream``'s lines, each at most ``MAX_LINE_CHARS`` bytes (a longer one in pieces)."""
    while True:
        chunk = stream.readline(MAX_LINE_CHARS)
        if not chunk:
            return
        yield chunk


__all__ = ["QUEUE_LINES", "TAIL_BYTES", "EndOfOutput", "Line", "OutputTail", "ProgramGroup"]
