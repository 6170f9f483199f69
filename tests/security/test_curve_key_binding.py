"""Item 5: with CURVE, a worker id is bound to the key that said ``hello`` with it.

Real keys, a real controller process over loopback TCP with an authorised-keys folder holding
two keys, A and B. A worker connection with key A says ``hello`` as ``victim-w0-aaaaaa`` and
leases a trial; once that connection is closed (so ZeroMQ would let the routing id be used
again), a connection with the other authorised key B under the same routing id is refused
``not_owner`` for ``hello``, ``heartbeat`` and ``report``: authorised keys are no longer equal.
Key A, on a fresh connection, still speaks for its worker.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import (
    Ack,
    Error,
    Heartbeat,
    Hello,
    Message,
    Reply,
    Report,
    RequestTrial,
    TrialAssignment,
)
from pbt_actors.transport.curve import load_keypair, load_public_key
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.security.conftest import two_authorised_keys
from tests.support.runs import TOY, cli, wait_for_line

pytestmark = pytest.mark.timeout(120)

VICTIM = "victim-w0-aaaaaa"


def ask(endpoint: str, server_key: bytes, secret: Path, message: Message) -> Reply:
    """``message`` over a fresh connection with ``secret``'s key; retried while the routing id's
    previous connection is still open at the controller (its frames are ignored until then)."""
    deadline = time.monotonic() + 30
    while True:
        with WorkerEndpoint(endpoint, VICTIM, curve_server_key=server_key,
                            curve_keypair=load_keypair(secret)) as worker:
            try:
                return worker.request(message, timeout_s=0.5, retries=2)
            except RequestTimeout:
                if time.monotonic() > deadline:
                    raise


def test_a_second_authorised_key_cannot_speak_for_the_first_keys_worker(tmp_path: Path) -> None:
    ctl_pub, ctl_secret, a_secret, b_secret, authorized = two_authorised_keys(tmp_path)
    controller = cli("controller", str(TOY), "--store", str(tmp_path / "store"), "--bind", "tcp://127.0.0.1:0",
                     "--curve-secret", str(ctl_secret), "--authorized-keys", str(authorized),
                     env={"TOY_LEASE_S": "300"})
    try:
        line = wait_for_line(controller, "listening on")
        endpoint = line.split("listening on ")[1].split()[0]
        server_key = load_public_key(ctl_pub)

        ack = ask(endpoint, server_key, a_secret, Hello(VICTIM))
        assert isinstance(ack, Ack) and ack.run
        trial = ask(endpoint, server_key, a_secret, RequestTrial(VICTIM, ack.run))
        assert isinstance(trial, TrialAssignment)

        forged_report = Report(VICTIM, trial.trial_id, trial.attempt, {"score": 999.0}, run=ack.run)
        for message in (Hello(VICTIM), Heartbeat(VICTIM, trial.trial_id, trial.attempt, 0, None, ack.run),
                        forged_report):
            reply = ask(endpoint, server_key, b_secret, message)
            assert isinstance(reply, Error) and reply.code == "not_owner", reply
            assert "bound to another CURVE key" in reply.message

        # the key that said hello still speaks for its worker (its lease was untouched)
        reply = ask(endpoint, server_key, a_secret, Heartbeat(VICTIM, trial.trial_id, trial.attempt, 0, None, ack.run))
        assert isinstance(reply, Ack), reply
    finally:
        controller.terminate()
        controller.communicate(timeout=30)
