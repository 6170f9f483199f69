"""Issue 20 item 1: a flood of supervisor ``hello``s cannot evict a live host's claim.

A real controller (embedded, ZeroMQ on loopback) and a real ``pbt-actors worker`` host, with
and without CURVE. A raw client sends 17 supervisor ``hello``s listing 4,096 made-up worker ids
each (the owner table held 65,536: the flood evicted the real owners), then a flood within the
per-host bound from many connections until the tables are full, then claims the live host's
worker id and says it is lost. Before, the claim and the ``worker_lost`` were acked (the trial
re-queued), the real supervisor got ``host_taken`` and the host exited 1; with CURVE, a second
authorised key took the worker ids and the real workers were refused ``not_owner``. Now every
step of the attacker is refused and the real host keeps completing trials.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from pbt_actors.model.protocol import Ack, Error, Hello, Message, Reply, WorkerLost
from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.experiment_loader import load_experiment_file
from pbt_actors.transport.curve import load_keypair, start_authenticator
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.security.conftest import STEP_ENV, free_tcp_address, two_authorised_keys, wait_until
from tests.support.runs import TOY, cli

pytestmark = pytest.mark.timeout(180)


def ask(address: str, identity: str, message: Message, client: dict[str, Any]) -> Reply:
    with WorkerEndpoint(address, identity, **client) as endpoint:
        reply: Reply = endpoint.request(message, timeout_s=5, retries=2)  # type: ignore[assignment]
        return reply


def completed(handle: Any) -> int:
    return int(handle.status().by_status.get("completed", 0))


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_a_hello_flood_never_evicts_a_live_hosts_claim(tmp_path: Path, curve: bool) -> None:
    experiment, _ = load_experiment_file(str(TOY))
    experiment = replace(experiment, max_steps=4000)  # (the module may be cached with another TOY_MAX_STEPS)
    address = free_tcp_address()
    server: dict[str, Any] = {}
    attacker: dict[str, Any] = {}
    host_args: list[str] = []
    authenticator = None
    if curve:
        ctl_pub, ctl_secret, a_secret, b_secret, authorized = two_authorised_keys(tmp_path)
        public, secret = load_keypair(ctl_secret)
        server = {"curve_secret_key": secret, "curve_public_key": public}
        authenticator = start_authenticator(zmq.Context.instance(), str(authorized))
        attacker = {"curve_server_key": public, "curve_keypair": load_keypair(b_secret)}
        host_args = ["--curve-server-key", str(ctl_pub), "--curve-secret", str(a_secret)]
    handle = Controller.start(experiment, tmp_path / "store", address, endpoint_options=server)
    host: subprocess.Popen[str] | None = None
    try:
        host = cli("worker", str(TOY), "--connect", address, "--checkpoint-root", str(tmp_path / "ckpt"),
                   "--host-id", "h1", "--devices", "cpu", "--workers", "1", "--no-zygote", *host_args,
                   env={**STEP_ENV, "TOY_STEP_SLEEP_S": "0.05", "TOY_MAX_STEPS": "400"})
        real = wait_until(lambda: next((w for w in handle.status().running_workers if w.startswith("h1-w0-")), None),
                          60, "the real host's worker to run")

        # 17 hellos of 4,096 made-up worker ids (69,632 > the table's 65,536)
        for i in range(17):
            made_up = tuple(f"evil{i}-{j}" for j in range(4096))
            reply = ask(address, f"evil-sup-{i}", Hello(f"evil-sup-{i}", host=f"evil{i}", workers=made_up),
                        attacker)
            assert isinstance(reply, Error) and reply.code == "host_taken", reply
            assert "at most" in reply.message
        # then within the per-host bound, from many connections, until the tables are full
        refused = 0
        for i in range(70):
            made_up = tuple(f"fill{i}-{j}" for j in range(1000))
            reply = ask(address, f"fill-sup-{i}", Hello(f"fill-sup-{i}", host=f"fill{i}", workers=made_up),
                        attacker)
            assert isinstance(reply, Ack | Error), reply
            refused += isinstance(reply, Error)
        assert refused, "a flood past the tables' size must be refused, not evict older claims"

        # the attacker claims the live host's worker id, and says it is lost
        reply = ask(address, "evil-claim", Hello("evil-claim", host="evil-claim", workers=(real,)), attacker)
        assert isinstance(reply, Error) and reply.code in ("host_taken", "not_owner"), reply
        reply = ask(address, "evil-claim", WorkerLost(real, "forged"), attacker)
        assert isinstance(reply, Error) and reply.code == "not_owner", reply

        # the real host keeps working: more trials complete, past several of its hellos (3 s apart)
        before = completed(handle)
        wait_until(lambda: completed(handle) >= before + 12 or host.poll() is not None, 90,
                   "the real host to complete more trials")
        assert host.poll() is None, host.communicate(timeout=5)[0]
        assert completed(handle) >= before + 12
        assert real in handle.status().running_workers or completed(handle) > before
    finally:
        handle.stop()
        if host is not None and host.poll() is None:
            host.terminate()
            host.communicate(timeout=30)
        if authenticator is not None:
            authenticator.stop()
