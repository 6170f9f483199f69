"""Security-suite helpers: a controller embedded in the test process, workers as real processes.

Waiting and port picking are the fault suite's (one copy each); this file only adds what the
security tests share.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from pbt_actors.model.protocol import Ack, Hello, Reply, RequestTrial
from pbt_actors.transport.endpoints import ControllerEndpoint
from tests.faults.harness import free_port
from tests.support.waiting import wait_until

STEP_ENV = {"TOY_STEP_SLEEP_S": "0.1", "TOY_LEASE_S": "30"}

__all__ = ["STEP_ENV", "RogueController", "free_tcp_address", "two_authorised_keys", "wait_until"]


def free_tcp_address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class RogueController(threading.Thread):
    """A raw ROUTER on ``address`` playing a rogue controller: acks ``hello`` with a run id,
    answers every ``request_trial`` with ``answer`` (anything, unvalidated: the struct is sent as
    built) and records when each came; acks the rest."""

    def __init__(self, address: str, answer: Reply) -> None:
        super().__init__(daemon=True)
        self.address, self.answer = address, answer
        self.asked: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        endpoint = ControllerEndpoint(self.address)
        self.ready.set()
        try:
            while not self.stop.is_set():
                for incoming in endpoint.recv_batch(0.05):
                    if incoming.message is None or incoming.request_id is None:
                        continue
                    reply: Reply = Ack("r" * 32) if isinstance(incoming.message, Hello) else Ack()
                    if isinstance(incoming.message, RequestTrial):
                        self.asked.append(time.monotonic())
                        reply = self.answer
                    endpoint.send(incoming.identity, incoming.request_id, reply)
        finally:
            endpoint.close()


def two_authorised_keys(tmp_path: Path) -> tuple[Path, Path, Path, Path, Path]:
    """CURVE keys for a controller and two clients A and B, both authorised: (controller public,
    controller secret, A secret, B secret, the authorised-keys folder)."""
    from pbt_actors.transport.curve import generate_keypair

    ctl_pub, ctl_secret = generate_keypair(tmp_path / "controller", "controller")
    a_pub, a_secret = generate_keypair(tmp_path / "a", "host-a")
    b_pub, b_secret = generate_keypair(tmp_path / "b", "host-b")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(a_pub, authorized)
    shutil.copy(b_pub, authorized)
    return Path(ctl_pub), Path(ctl_secret), Path(a_secret), Path(b_secret), authorized
