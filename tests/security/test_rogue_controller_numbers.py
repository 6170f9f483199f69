"""Issue 20 item 14: a worker validates every number it receives.

A rogue controller (a raw ROUTER on loopback, in this test) answers every ``request_trial`` of
a real ``pbt-actors worker`` host with ``wait`` whose ``retry_after_s`` is NaN, negative or
infinite. Before, the worker paused ``min(NaN, 5)`` = NaN seconds, i.e. not at all, and asked
again at thousands of requests a second. Now such a ``wait`` fails the protocol's schema
(``retry_after_s`` is declared finite, ``>= 0`` and bounded): the worker drops it as a bad
reply and resends only after its request timeout, so the rogue hears a handful of requests.
The schema half is checked directly too, for every number a worker receives.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from pbt_actors.model.errors import SchemaError
from pbt_actors.model.protocol import TrialAssignment, Wait, message_from_body
from tests.security.conftest import RogueController, free_tcp_address
from tests.support.runs import TOY, cli
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

WINDOW_S = 4.0


@pytest.mark.parametrize("retry_after_s", [math.nan, -1.0, math.inf], ids=["nan", "negative", "inf"])
def test_a_bad_wait_from_a_rogue_controller_is_a_bad_reply_not_a_busy_loop(tmp_path: Path,
                                                                           retry_after_s: float) -> None:
    rogue = RogueController(free_tcp_address(), Wait(retry_after_s))
    rogue.start()
    assert rogue.ready.wait(10)
    host = cli("worker", str(TOY), "--connect", rogue.address, "--checkpoint-root", str(tmp_path / "ckpt"),
               "--devices", "cpu", "--workers", "1", "--no-zygote")
    try:
        wait_until(lambda: rogue.asked or host.poll() is not None, 60, "the worker's first request_trial")
        assert rogue.asked, "the worker never asked for a trial"
        first = rogue.asked[0]
        # the measuring window: count what the worker asks in WINDOW_S (a rate, so a deadline)
        wait_until(lambda: time.monotonic() >= first + WINDOW_S or host.poll() is not None, WINDOW_S + 10,
                   "the measuring window")
        in_window = sum(1 for t in rogue.asked if t <= first + WINDOW_S)
        assert in_window <= 10, f"{in_window} request_trial in {WINDOW_S}s: a busy loop"
    finally:
        rogue.stop.set()
        host.terminate()
        host.communicate(timeout=30)
        rogue.join(10)


def _assignment(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"trial_id": 1, "attempt": 1, "generation": 0, "hparams": {"h": 0.5},
                               "start_step": 0, "end_step": 5, "parent_id": None, "parent_checkpoint": None,
                               "heartbeat_s": 1.0, "experiment": "toy"}
    body.update(changes)
    return body


@pytest.mark.parametrize("body", [
    ("wait", {"retry_after_s": math.nan}), ("wait", {"retry_after_s": -0.5}), ("wait", {"retry_after_s": math.inf}),
    ("wait", {"retry_after_s": 1e9}),
    ("trial", _assignment(heartbeat_s=math.nan)), ("trial", _assignment(heartbeat_s=0.0)),
    ("trial", _assignment(heartbeat_s=-1.0)), ("trial", _assignment(heartbeat_s=math.inf)),
    ("trial", _assignment(start_step=-3)), ("trial", _assignment(start_step=9, end_step=5)),
    ("trial", _assignment(generation=-1)), ("trial", _assignment(parent_id=0)),
    ("trial", _assignment(hparams={"h": math.nan})), ("trial", _assignment(trial_id=0)),
    ("stop", {"trial_id": -1, "reason": "x"}),
])
def test_every_number_a_worker_receives_is_checked(body: tuple[str, dict[str, object]]) -> None:
    with pytest.raises(SchemaError):
        message_from_body(*body)


def test_good_replies_still_parse() -> None:
    assert message_from_body("wait", {"retry_after_s": 0.0}) == Wait(0.0)
    assert isinstance(message_from_body("trial", _assignment()), TrialAssignment)
