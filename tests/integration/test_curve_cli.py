"""Authenticated links: CURVE keys from `pbt-actors keys`, unknown keys get nothing, and a
non-loopback bind needs keys or an explicit --insecure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import RequestTrial, TrialAssignment
from pbt_actors.transport.curve import load_keypair, load_public_key
from pbt_actors.transport.endpoints import WorkerEndpoint
from tests.support.runs import REPO, TOY, cli, wait_for_line


def keys(directory: Path, name: str) -> tuple[Path, Path]:
    subprocess.run([sys.executable, "-m", "pbt_actors.cli", "keys", "generate", "--dir", str(directory),
                    "--name", name], check=True, cwd=REPO, capture_output=True)
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@pytest.mark.timeout(180)
def test_curve_controller_serves_known_keys_and_ignores_unknown_ones(tmp_path: Path) -> None:
    ctl_pub, ctl_secret = keys(tmp_path / "controller", "controller")
    good_pub, good_secret = keys(tmp_path / "good", "host-good")
    _, evil_secret = keys(tmp_path / "evil", "host-evil")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(good_pub, authorized)
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller = cli("controller", str(TOY), "--store", str(store), "--bind", "tcp://127.0.0.1:0",
                     "--curve-secret", str(ctl_secret), "--authorized-keys", str(authorized))
    line = wait_for_line(controller, "listening on")
    endpoint = line.split("listening on ")[1].split()[0]
    server_key = load_public_key(ctl_pub)

    with WorkerEndpoint(endpoint, "intruder", curve_server_key=server_key,
                        curve_keypair=load_keypair(evil_secret)) as intruder, pytest.raises(RequestTimeout):
        intruder.request(RequestTrial("intruder"), timeout_s=1.0, retries=1)
    with WorkerEndpoint(endpoint, "plaintext") as plain, pytest.raises(RequestTimeout):
        plain.request(RequestTrial("plaintext"), timeout_s=1.0, retries=1)

    host = cli("worker", str(TOY), "--connect", endpoint, "--devices", "cpu", "--workers", "2",
               "--checkpoint-root", str(ckpt), "--host-id", "good",
               "--curve-server-key", str(ctl_pub), "--curve-secret", str(good_secret))
    out, _ = host.communicate(timeout=150)
    assert host.returncode == 0, out
    out, _ = controller.communicate(timeout=60)
    assert controller.returncode == 0, out
    assert "intruder" not in out  # the rejected peers never reached the controller's logic
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    with LmdbTrialStore(store, readonly=True) as s:
        workers = {t.worker for t in s.iter_trials()}
        assert workers and all(w.startswith("good-") for w in workers)


@pytest.mark.timeout(60)
def test_known_key_gets_a_trial_directly(tmp_path: Path) -> None:
    ctl_pub, ctl_secret = keys(tmp_path / "c", "controller")
    good_pub, good_secret = keys(tmp_path / "g", "good")
    authorized = tmp_path / "auth"
    authorized.mkdir()
    shutil.copy(good_pub, authorized)
    controller = cli("controller", str(TOY), "--store", str(tmp_path / "store"), "--bind", "tcp://127.0.0.1:0",
                     "--curve-secret", str(ctl_secret), "--authorized-keys", str(authorized))
    endpoint = wait_for_line(controller, "listening on").split("listening on ")[1].split()[0]
    with WorkerEndpoint(endpoint, "good-0", curve_server_key=load_public_key(ctl_pub),
                        curve_keypair=load_keypair(good_secret)) as worker:
        reply = worker.request(RequestTrial("good-0"), timeout_s=5.0, retries=5)
    assert isinstance(reply, TrialAssignment)


@pytest.mark.timeout(60)
def test_non_loopback_bind_needs_keys_or_insecure(tmp_path: Path) -> None:
    refused = cli("controller", str(TOY), "--store", str(tmp_path / "a"), "--bind", "tcp://0.0.0.0:0")
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "--insecure" in out
    allowed = cli("controller", str(TOY), "--store", str(tmp_path / "b"), "--bind", "tcp://0.0.0.0:0", "--insecure")
    assert "NOT encrypted" in wait_for_line(allowed, "WARNING")
    wait_for_line(allowed, "listening on")

