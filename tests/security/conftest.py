"""Security-suite helpers: a controller embedded in the test process, workers as real processes.

Waiting and port picking are the fault suite's (one copy each); this file only adds what the
security tests share.
"""

from __future__ import annotations

from tests.faults.harness import free_port
from tests.support.waiting import wait_until

STEP_ENV = {"TOY_STEP_SLEEP_S": "0.1", "TOY_LEASE_S": "30"}

__all__ = ["STEP_ENV", "free_tcp_address", "wait_until"]


def free_tcp_address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"
