"""Issue "hardening, round two", acceptance: its attacks and an object-store outage in one run.

A controller and a worker host (real ``pbt-actors`` processes, without and with CURVE) train
over an S3 root on a loopback server. During the run a raw client (with CURVE: a second
authorised key):

* floods supervisor ``hello``s (17 of 4,096 made-up worker ids, then 1,000 each from 70
  connections), claims the live host's worker id and says it is lost: every step refused;
* holds a lease as an ordinary worker and reports its trial with another trial's checkpoint
  ref: refused, the victim's record and file untouched.

Then the bucket goes away mid-run (its objects saved first: an outage, not data loss). The
controller stops with the checkpoint store's exit code and one line, having charged no trial
for it; the bucket comes back, the same commands resume, the run finishes, ``verify`` is clean,
no trial completed twice, and no process the test started is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pbt_actors.common.exit_codes import EXIT_CHECKPOINT_STORE
from pbt_actors.model.protocol import Ack, Error, Hello, Message, Reply, Report, RequestTrial, TrialAssignment
from pbt_actors.model.records import TrialStatus
from pbt_actors.transport.curve import load_keypair, start_authenticator
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.faults.harness import EXPERIMENTS, Proc, env_with, finished, pid_alive, start, trials, verify_cli
from tests.security.conftest import two_authorised_keys
from tests.support.s3_server import S3Server, serving_bucket
from tests.support.waiting import wait_until

pytest.importorskip("s3fs", reason="object-storage tests need the s3 extra: pip install .[s3] (.ci/install does)")
EXPERIMENT = EXPERIMENTS / "flaky.py"  # without FLAKY_* it trains and saves like the toy
ENV = env_with(FAULT_POPULATION=4, FAULT_STEPS_PER_TRIAL=5, FAULT_MAX_STEPS=60, FAULT_STEP_SLEEP_S=0.04,
               FAULT_LEASE_S=20, FAULT_MAX_ATTEMPTS=3)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with serving_bucket("pbt-round-two-unused") as server:
        yield server


def ask(address: str, identity: str, message: Message, client: dict[str, Any]) -> Reply:
    with WorkerEndpoint(address, identity, **client) as endpoint:
        reply: Reply = endpoint.request(message, timeout_s=10, retries=2)  # type: ignore[assignment]
        return reply


def completed(store: Path) -> int:
    return sum(t.status is TrialStatus.COMPLETED for t in trials(store))


def flood_and_claim(address: str, victim: str, client: dict[str, Any]) -> None:
    """Item 1's attack: nothing of it may be acknowledged."""
    for i in range(17):
        made_up = tuple(f"evil{i}-{j}" for j in range(4096))
        reply = ask(address, f"evil-sup-{i}", Hello(f"evil-sup-{i}", host=f"evil{i}", workers=made_up), client)
        assert isinstance(reply, Error) and reply.code == "host_taken", reply
    for i in range(70):
        made_up = tuple(f"fill{i}-{j}" for j in range(1000))
        reply = ask(address, f"fill-sup-{i}", Hello(f"fill-sup-{i}", host=f"fill{i}", workers=made_up), client)
        assert isinstance(reply, Ack | Error), reply
    reply = ask(address, "evil-claim", Hello("evil-claim", host="evil-claim", workers=(victim,)), client)
    assert isinstance(reply, Error) and reply.code in ("host_taken", "not_owner"), reply


def borrow_a_checkpoint(address: str, store: Path, client: dict[str, Any]) -> tuple[int, int]:
    """Item 3's attack: lease a trial as an ordinary worker, report it with a completed trial's
    ref. Returns (the victim's id, the thief's trial id)."""
    victim = next(t for t in trials(store) if t.status is TrialStatus.COMPLETED and t.checkpoint is not None)
    with WorkerEndpoint(address, "thief-w0", **client) as thief:
        hello = thief.request(Hello("thief-w0"), timeout_s=10, retries=2)
        assert isinstance(hello, Ack) and hello.run, hello
        lease = thief.request(RequestTrial("thief-w0", hello.run), timeout_s=10, retries=2)
        wait_s = 0.0
        while not isinstance(lease, TrialAssignment):  # the real host may hold every pending trial
            assert wait_s < 60, lease
            wait_s += 0.5
            lease = thief.request(RequestTrial("thief-w0", hello.run), timeout_s=10, retries=2)
        thief.request(Report("thief-w0", lease.trial_id, lease.attempt, {"Q": 1e9}, checkpoint=victim.checkpoint,
                             run=hello.run), timeout_s=10, retries=2)
    return victim.id, lease.trial_id


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_floods_a_borrowed_ref_and_a_bucket_outage_in_one_run(s3: S3Server, tmp_path: Path, curve: bool) -> None:
    bucket = s3.make_bucket(f"pbt-round-two-{'curve' if curve else 'plain'}")
    root, store = f"s3://{bucket}/run", tmp_path / "store"
    env = {**s3.env, "PBT_ACTORS_CACHE_DIR": str(tmp_path / "cache"), **ENV}
    controller_keys: list[str] = []
    host_keys: list[str] = []
    attacker: dict[str, Any] = {}
    authenticator = None
    if curve:
        ctl_pub, ctl_secret, a_secret, b_secret, authorized = two_authorised_keys(tmp_path)
        controller_keys = ["--curve-secret", str(ctl_secret), "--authorized-keys", str(authorized)]
        host_keys = ["--curve-server-key", str(ctl_pub), "--curve-secret", str(a_secret)]
        attacker = {"curve_server_key": load_keypair(ctl_secret)[0], "curve_keypair": load_keypair(b_secret)}
        authenticator = start_authenticator(zmq.Context.instance(), str(authorized))  # for the attacker's client

    def launch() -> tuple[Proc, Proc, str]:
        controller = start("controller", str(EXPERIMENT), "--store", str(store), "--bind", "tcp://127.0.0.1:0",
                           "--checkpoint-root", root, "--linger", "3", *controller_keys, env=env)
        address = controller.wait_for_line("listening on", timeout_s=90).split("listening on ")[1].split()[0]
        host = start("worker", str(EXPERIMENT), "--connect", address, "--devices", "cpu", "--workers", "2",
                     "--checkpoint-root", root, "--host-id", "h1", "--controller-timeout", "20", *host_keys,
                     env=env)
        return controller, host, address

    procs: list[Proc] = []
    try:
        controller, host, address = launch()
        procs += [controller, host]
        wait_until(lambda: completed(store) >= 4 or controller.popen.poll() is not None, 120, "four completions")
        live = wait_until(lambda: next((t.worker for t in trials(store) if t.status is TrialStatus.RUNNING
                                        and (t.worker or "").startswith("h1-")), None), 60, "a running trial")
        flood_and_claim(address, live, attacker)
        victim_id, thief_trial = borrow_a_checkpoint(address, store, attacker)
        victim_before = next(t for t in trials(store) if t.id == victim_id)

        # the real host keeps completing trials
        before = completed(store)
        wait_until(lambda: completed(store) >= before + 4 or host.popen.poll() is not None, 120,
                   "the real host to complete more trials")
        assert host.popen.poll() is None, host.output()[-4000:]

        # an outage of the bucket mid-run: the controller stops, nothing is charged for it
        s3.remove_bucket(bucket, move_to=f"{bucket}-saved")
        assert controller.wait(180) == EXIT_CHECKPOINT_STORE, controller.output()[-4000:]
        assert "run the same command again to resume" in controller.output()
        host.wait(120)  # its workers find no controller (exit 69) or were told to stop
        held = trials(store)
        assert not [t for t in held if t.status is TrialStatus.FAILED and "CheckpointStoreFault" in (t.error or "")]
        assert not finished(store)

        # the bucket comes back: the same commands resume and finish the run
        s3.remove_bucket(f"{bucket}-saved", move_to=bucket)
        controller, host, address = launch()
        procs += [controller, host]
        assert controller.wait(300) == 0, controller.output()[-4000:]
        host.wait(120)
        assert finished(store)

        by_id = {t.id: t for t in trials(store)}
        assert by_id[victim_id] == victim_before or by_id[victim_id].collected_at is not None
        thief = by_id[thief_trial]
        assert thief.checkpoint != victim_before.checkpoint, thief  # completed later with its own file, if at all
        for trial in by_id.values():
            assert trial.final is None or trial.final.get("Q", 0.0) < 1e9, trial
        report = verify_cli(store, root)  # type: ignore[arg-type]
        assert report["ok"], report
    finally:
        for proc in procs:
            proc.kill_group()
        if authenticator is not None:
            authenticator.stop()
    assert not any(pid_alive(proc.popen.pid) for proc in procs)
