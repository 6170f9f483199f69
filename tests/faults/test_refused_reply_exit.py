"""Issue 20 item 17: a worker whose controller answers with replies it must refuse says so.

A controller (a raw ROUTER on loopback) answers every ``request_trial`` of a real worker
process with an assignment whose experiment name is unsafe (``../evil``, a path out of the
checkpoint root). The worker refuses that reply (schema), asks again, and at
``--controller-timeout`` gives up with exit 69. Before, its one line said "no controller at
..." though the controller had answered every time; now it says the controller answered and
what was refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pbt_actors.common.exit_codes import EXIT_NO_CONTROLLER
from pbt_actors.model.protocol import TrialAssignment
from tests.security.conftest import RogueController, free_tcp_address
from tests.support.runs import REPO, TOY

pytestmark = pytest.mark.timeout(120)


def test_a_refused_reply_is_named_not_called_no_controller(tmp_path: Path) -> None:
    unsafe = TrialAssignment(1, 1, generation=0, hparams={"h0": 0.5, "h1": 0.5}, start_step=0, end_step=5,
                             parent_id=None, parent_checkpoint=None, heartbeat_s=1.0, experiment="../evil")
    rogue = RogueController(free_tcp_address(), unsafe)
    rogue.start()
    assert rogue.ready.wait(10)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pbt_actors.cli", "worker-process", str(TOY), "--connect", rogue.address,
             "--checkpoint-root", str(tmp_path / "ckpt"), "--worker-id", "w0-abcdef", "--controller-timeout", "3"],
            check=False, cwd=str(REPO), capture_output=True, text=True, timeout=90, start_new_session=True)
    finally:
        rogue.stop.set()
        rogue.join(10)
    assert rogue.asked, "the worker never asked"
    assert proc.returncode == EXIT_NO_CONTROLLER, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no controller" not in last, last
    assert "answered" in last and "refused" in last and "experiment" in last, last
