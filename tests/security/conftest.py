"""Security-suite helpers: a controller embedded in the test process, workers as real processes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

STEP_ENV = {"TOY_STEP_SLEEP_S": "0.1", "TOY_LEASE_S": "30"}


def free_tcp_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
