"""The host supervisor tells the controller ``worker_lost`` without blocking itself.

A real supervisor actor with a real child process that exits with code 1, and a controller
address where nothing listens (a controller that is down or unreachable). Telling it
``worker_lost`` takes the notifier its 3 tries of 2 s; meanwhile the supervisor must keep
answering (status, other children), and the child's restart must wait until the notice was
given up on, so that the controller never hears "lost" after the same worker id asked again.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from pbt_actors.runtime.host_supervisor import HostSupervisor, _LostNotifier
from pbt_actors.runtime.restart_rules import Backoff, ChildSpec, Intensity, Restart
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exits_with_one() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])


def test_an_unreachable_controller_blocks_neither_status_nor_the_restart_order() -> None:
    notice_s = _LostNotifier.TRIES * _LostNotifier.TIMEOUT_S
    supervisor = HostSupervisor([ChildSpec("w0", exits_with_one, Restart.TRANSIENT)],
                                controller=f"tcp://127.0.0.1:{unused_port()}", intensity=Intensity(5, 60),
                                backoff=Backoff(0.05))
    try:
        started = time.monotonic()
        (child,) = wait_until(lambda: [c for c in supervisor.status() if c.last_exit is not None], 10,
                              "the first exit to be seen", poll_s=0.02)
        assert child.last_exit == 1 and child.state == "waiting"
        asked = time.monotonic()
        (child,) = supervisor.status()  # answered while the notice is still being tried
        assert time.monotonic() - asked < 1.0
        assert child.starts == 1  # not restarted before the controller was told (or given up on)
        wait_until(lambda: supervisor.status()[0].starts >= 2, notice_s + 10, "the restart")
        assert time.monotonic() - started >= notice_s * 0.9
    finally:
        supervisor.stop()
