"""Live terminal displays of the CLI (``run``'s progress, ``sim``'s progress, ``status --watch``).

One module, one library (rich), so that no command writes terminal control codes by hand. On a
terminal rich redraws in place; anywhere else (a pipe, a log file, CI) each update is a plain
line or block, printed at a slower cadence, so logs stay readable and greppable.

Displays never start threads (``auto_refresh=False``; the caller's loop calls ``update``):
``run`` forks its worker zygote before its first thread, and a display must not be the reason a
fork becomes unsafe.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

PLAIN_EVERY_S = 5.0
"""Off a terminal, at most one progress line per this many seconds (plus the last one)."""


def _console(stream: TextIO) -> Console:
    # highlight=False: our numbers are data, not something to colour by regex
    return Console(file=stream, highlight=False, soft_wrap=True)


class LiveProgress:
    """A count toward a total, with a status text: a bar on a terminal, lines elsewhere.

    ``total=None`` means unknown (the bar pulses, the line shows only the count).
    """

    def __init__(self, enabled: bool, description: str, *, stream: TextIO | None = None,
                 plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.enabled = enabled
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.console = _console(self.stream)
        self.tty = self.console.is_terminal
        self.plain_every_s = plain_every_s
        self._last_plain = float("-inf")
        self._bar: Progress | None = None
        if enabled and self.tty:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=self.console, auto_refresh=False)
            self._task = self._bar.add_task(description, total=None, status="")
            self._bar.start()

    def update(self, done: int, total: int | None, status: str = "", *, final: bool = False) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, status=status)
            self._bar.refresh()
            return
        now = time.monotonic()
        if not final and now - self._last_plain < self.plain_every_s:
            return
        self._last_plain = now
        count = f"{done}/{total}" if total is not None else str(done)
        self.stream.write(f"{self.description} {count}  {status}".rstrip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class LiveText:
    """A block of text redrawn in place on a terminal; printed block after block elsewhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.console = _console(self.stream)
        self.tty = self.console.is_terminal
        self._live: Live | None = None

    def show(self, text: str) -> None:
        if not self.tty:
            self.stream.write(text + "\n\n")
            self.stream.flush()
            return
        if self._live is None:
            self._live = Live(Text(text), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(Text(text), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveText:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
