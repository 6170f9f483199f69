"""Issue 21, items 2, 4 and 7c: how a multi-host run ends.

* A controller whose hosts' workers all heard ``done`` exits at once, not after its whole
  ``--linger`` (a host supervisor never asks for work: it counts as done with its workers).
* A controller started with ``--checkpoint-root`` records it in the store (``status`` and
  ``verify`` read it); one started without says at start that it cannot collect.
* ``--serve-finished`` (Kubernetes' StatefulSet): on a finished store the controller stays up
  answering ``done``, so a late host exits 0 in seconds, and it exits 0 on SIGTERM.

Real CLI processes, killed with their process groups at teardown (``tests/faults/conftest.py``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import META_CHECKPOINT_ROOT
from tests.faults.harness import env_with, finished, start, start_host
from tests.support.runs import REPO, TOY

EXAMPLE_TOY = REPO / "examples" / "toy_quadratic.py"

ENV = env_with(TOY_STEP_SLEEP_S=0.0, TOY_MAX_STEPS=20, TOY_LEASE_S=60)
LINGER_S = 30


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_controller_ends_with_its_hosts_and_a_finished_one_serves_done_to_late_hosts(tmp_path: Path) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    controller = start("controller", str(TOY), "--store", str(store), "--bind", "tcp://127.0.0.1:0",
                       "--checkpoint-root", str(ckpt), "--linger", str(LINGER_S), env=ENV)
    endpoint = controller.wait_for_line("listening on", timeout_s=90).split("listening on ")[1].split()[0]
    host = start_host(TOY, endpoint, ckpt, "h1", 2, env=ENV)
    assert host.wait(90) == 0, "".join(host.lines)
    host_ended = time.monotonic()
    assert controller.wait(LINGER_S) == 0, "".join(controller.lines)
    assert time.monotonic() - host_ended < 10  # not its whole --linger: the host heard `done` too
    assert finished(store)
    assert "no --checkpoint-root" not in "".join(controller.lines)
    with LmdbTrialStore(store, readonly=True) as reader:
        assert reader.get_meta(META_CHECKPOINT_ROOT) == str(ckpt.resolve())

    # on the finished store, with --serve-finished: it stays up
    again = start("controller", str(TOY), "--store", str(store), "--bind", "tcp://127.0.0.1:0", "--serve-finished",
                  env=ENV)
    endpoint = again.wait_for_line("listening on", timeout_s=90).split("listening on ")[1].split()[0]
    again.wait_for_line("answering `done` until SIGTERM", timeout_s=30)
    late = start_host(TOY, endpoint, ckpt, "late", 1, env=ENV)
    started = time.monotonic()
    assert late.wait(60) == 0, "".join(late.lines)
    assert time.monotonic() - started < 20  # one `done`, not --controller-timeout
    assert again.popen.poll() is None  # still serving
    again.popen.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0, "".join(again.lines)
    with LmdbTrialStore(store, readonly=True) as reader:  # a start without a root keeps the recorded one
        assert reader.get_meta(META_CHECKPOINT_ROOT) == str(ckpt.resolve())


@pytest.mark.timeout(90)
def test_a_controller_that_cannot_collect_says_so_at_start(tmp_path: Path) -> None:
    """Retention on in the experiment (the example toy's default) but no --checkpoint-root."""
    controller = start("controller", str(EXAMPLE_TOY), "--store", str(tmp_path / "store"), "--bind",
                       "tcp://127.0.0.1:0")
    line = controller.wait_for_line("no --checkpoint-root", timeout_s=60)
    assert "cannot delete any checkpoint" in line
    controller.wait_for_line("listening on", timeout_s=60)
    controller.popen.send_signal(signal.SIGTERM)
    assert controller.wait(30) == 0
