"""Item 3: a second host started with the same ``--host-id`` is refused and exits non-zero.

Real processes and sockets: an embedded controller, then two ``pbt-actors worker`` hosts with
``--host-id h1``. The second host's supervisor says ``hello`` as host ``h1`` while the first
one's claim is live: the controller answers ``host_taken``, the second host stops its workers
and exits 1 saying why. Before, it did nothing, logged nothing and never exited (its workers'
connections, with the same routing ids, were silently ignored or took the ids over).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pbt_actors.runtime.controller.controller_actor import Controller
from pbt_actors.runtime.experiment_loader import load_experiment_file
from tests.security.conftest import STEP_ENV, free_tcp_address, wait_until
from tests.support.runs import TOY, cli

pytestmark = pytest.mark.timeout(120)


def worker_host(address: str, root: Path) -> subprocess.Popen[str]:
    return cli("worker", str(TOY), "--connect", address, "--checkpoint-root", str(root), "--host-id", "h1",
               "--devices", "cpu", "--workers", "1", "--no-zygote",
               env={**STEP_ENV, "TOY_STEP_SLEEP_S": "0.5", "TOY_MAX_STEPS": "200"})


def test_a_second_host_with_the_same_host_id_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_MAX_STEPS", "200")
    experiment, _ = load_experiment_file(str(TOY))
    address = free_tcp_address()
    handle = Controller.start(experiment, tmp_path / "store", address)
    try:
        first = worker_host(address, tmp_path / "ckpt")
        # worker ids are per process, <slot>-<6 hex>: match the slot h1-w0
        wait_until(lambda: any(w.startswith("h1-w0-") for w in handle.status().running_workers), 60,
                   "the first host's worker to run")
        second = worker_host(address, tmp_path / "ckpt")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1, out
        assert "host_taken" in out and "h1" in out, out
        assert first.poll() is None, "the first host must keep running"
        assert any(w.startswith("h1-w0-") for w in handle.status().running_workers)
    finally:
        handle.stop()
