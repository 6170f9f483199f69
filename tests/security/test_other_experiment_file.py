"""Issue 20 item 7: a worker host started with another experiment file than the controller's
is refused, with one line naming both files.

Real processes: ``pbt-actors controller`` started from the toy experiment, then
``pbt-actors worker`` hosts. A host whose file differs (here: another space, so every trial
would fail with ``KeyError``) says its file's sha256 in its supervisor ``hello``; the controller
knows its own from the store meta record and answers ``wrong_run`` naming both files: the host
stops its workers and exits 1 with that line, and no trial was leased to it. Before, the host
was accepted and failed every trial. A host with the controller's own file still runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pbt_actors.model.protocol import Hello, message_from_body
from pbt_actors.model.records import TrialStatus
from tests.faults.harness import trials
from tests.support.runs import TOY, cli, output_once_exited, wait_for_line
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(150)


def host(experiment: Path, address: str, root: Path, host_id: str) -> subprocess.Popen[str]:
    return cli("worker", str(experiment), "--connect", address, "--checkpoint-root", str(root), "--host-id", host_id,
               "--devices", "cpu", "--workers", "1", "--no-zygote",
               env={"TOY_STEP_SLEEP_S": "0.05", "TOY_MAX_STEPS": "200"})


def test_a_host_with_another_experiment_file_is_refused_naming_both(tmp_path: Path) -> None:
    other = tmp_path / "other_experiment.py"
    other.write_text(TOY.read_text(encoding="utf-8").replace('"h1"', '"h9"'), encoding="utf-8")
    store = tmp_path / "store"
    controller = cli("controller", str(TOY), "--store", str(store), "--bind", "tcp://127.0.0.1:0",
                     env={"TOY_MAX_STEPS": "200"})
    try:
        address = wait_for_line(controller, "listening on").split("listening on ")[1].split()[0]
        wrong = host(other, address, tmp_path / "ckpt", "h-other")
        out = output_once_exited(wrong, 90, "the host with another experiment file kept running")
        assert wrong.returncode == 1, out
        line = next(line for line in out.splitlines() if "experiment file" in line)
        assert str(other) in line and str(TOY) in line, line
        assert not [t for t in trials(store) if t.worker and t.worker.startswith("h-other")], \
            "a trial was leased to the refused host"

        right = host(TOY, address, tmp_path / "ckpt", "h-same")
        wait_until(lambda: [t for t in trials(store) if t.status is TrialStatus.COMPLETED
                            and (t.worker or "").startswith("h-same")], 60, "the same-file host to complete a trial")
        right.terminate()
        right.communicate(timeout=30)
    finally:
        controller.terminate()
        controller.communicate(timeout=30)


def test_the_new_hello_fields_are_optional_on_the_wire() -> None:
    """An old peer's hello (no experiment fields) still parses; one without them has the old bytes."""
    old = {"worker": "s", "host": "h", "pid": 1, "device": "", "run": "", "workers": ["h-w0"]}
    assert message_from_body("hello", old) == Hello("s", "h", 1, "", "", ("h-w0",))
    assert Hello("s", "h", 1, "", "", ("h-w0",)).to_body() == old
    new = Hello("s", "h", 1, "", "", ("h-w0",), "/x/exp.py", "ab" * 32)
    assert message_from_body("hello", new.to_body()) == new
