"""A log line per kind of trouble per window, so a hostile flood cannot flood the logs.

Layer 2, pure apart from the logger it is given; the clock is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_WINDOW_S = 60.0
MAX_KEYS = 1024


class RateLimitedLog:
    """Logs the first message of each ``key`` per ``window_s`` seconds; counts the rest.

    The next line logged for a key after its window ends says how many were suppressed, so no
    event goes unaccounted for::

        limiter = RateLimitedLog(log, window_s=60)
        limiter.log(logging.WARNING, "malformed", "dropped a frame from %r: %s", peer, err)

    At most ``max_keys`` keys are tracked (keys are meant to be a small closed set such as
    error codes); past that, expired keys are forgotten and then the oldest ones.
    Thread-safe, though each endpoint uses its own from one thread.
    """

    def __init__(self, logger: logging.Logger, *, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.logger = logger
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[Hashable, tuple[float, int]] = {}  # key -> (window start, suppressed)
        self._lock = threading.Lock()

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` already logged in this window.

        Returns whether a line was written.
        """
        now = self.clock()
        with self._lock:
            state = self._windows.get(key)
            if state is not None and now - state[0] < self.window_s:
                self._windows[key] = (state[0], state[1] + 1)
                return False
            suppressed = state[1] if state is not None else 0
            if state is None and len(self._windows) >= self.max_keys:
                self._evict(now)
            self._windows[key] = (now, 0)
        if suppressed:
            msg = f"{msg} (%d similar suppressed in the previous {self.window_s:g}s window)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: Any) -> bool:
        """``log(logging.WARNING, ...)``."""
        return self.log(logging.WARNING, key, msg, *args)

    def suppressed(self, key: Hashable) -> int:
        """How many messages of ``key`` were suppressed in its current window (not yet reported)."""
        with self._lock:
            state = self._windows.get(key)
            return state[1] if state is not None else 0

    def _evict(self, now: float) -> None:
        expired = [k for k, (start, _) in self._windows.items() if now - start >= self.window_s]
        for key in expired:
            del self._windows[key]
        while len(self._windows) >= self.max_keys:  # all live: drop the oldest window
            oldest = min(self._windows, key=lambda k: self._windows[k][0])
            del self._windows[oldest]
