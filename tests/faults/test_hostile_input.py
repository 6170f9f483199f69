"""Issue 4, item 8 (live part; the codec fuzzing is ``tests/unit/test_codec.py``): while a real
run goes on, raw ZeroMQ clients fire more than 10,000 malformed messages at the controller's
socket. The controller stays up, answers ``error`` wherever the request id could be read,
logs once per kind of trouble rather than once per message, and the run completes with
every invariant intact."""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from pbt_actors.model.protocol import PROTOCOL_VERSION, REPLY_TYPES, Error
from pbt_actors.model.records import TrialStatus
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, decode
from tests.faults.harness import env_with, finished, start_controller, start_host, trials, verify_cli
from tests.support.runs import TOY, assert_complete_lineage
from tests.support.waiting import wait_until

TARGET = 10_500
ATTACKERS = 4
WINDOW = 150  # answerable requests in flight per attacker socket
OVERSIZED = 12


V = PROTOCOL_VERSION


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _env(tag: Any, body: Any, rid: int, version: Any = PROTOCOL_VERSION) -> bytes:
    return _pack({"v": version, "t": tag, "id": rid, "b": body})


def _report(worker: str, trial_id: int, attempt: int) -> dict[str, Any]:
    return {"worker": worker, "trial_id": trial_id, "attempt": attempt, "final": {"Q": 9.9},
            "measurements": [], "checkpoint": None}


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _truncated(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randint(1, len(data) - 1)]


Kind = tuple[str, Callable[[random.Random, str, int], list[bytes]], str | None]

# (name, frames(rng, my identity, request id), the error code expected back, or None: the
# controller cannot tell who asked what, so it drops the frame)
KINDS: list[Kind] = [
    ("random bytes", lambda r, me, rid: [os.urandom(r.randint(1, 300))], None),
    ("truncated msgpack", lambda r, me, rid: [_truncated(_env("report", _report(me, 1, 1), rid), r)], None),
    ("deep nesting", lambda r, me, rid: [_env("report", _nested(r.randint(20, 400)), rid)], None),
    ("not a map", lambda r, me, rid: [_pack([1, "two", 3.0])], None),
    ("integer map keys", lambda r, me, rid: [_pack({1: 2, "id": rid})], None),
    ("invalid request id", lambda r, me, rid: [_pack({"v": V, "t": "hello", "id": -rid - 1, "b": {}})], None),
    ("extra frames", lambda r, me, rid: [_env("hello", {"worker": me}, rid), b"surprise"], None),
    ("empty frame", lambda r, me, rid: [b""], None),
    ("wrong body types", lambda r, me, rid: [_env("report", {"worker": me, "trial_id": "one", "attempt": 1.5,
                                                              "final": [1, 2]}, rid)], "malformed"),
    ("wrong envelope types", lambda r, me, rid: [_pack({"v": "1", "t": "hello", "id": rid, "b": {}})], "malformed"),
    ("no body", lambda r, me, rid: [_pack({"v": V, "t": "heartbeat", "id": rid})], "malformed"),
    ("unknown type", lambda r, me, rid: [_env(f"launch_missiles_{r.randint(0, 9)}", {}, rid)], "unknown_type"),
    ("reply type sent as a request", lambda r, me, rid: [_env("done", {}, rid)], "unknown_type"),
    ("wrong protocol version", lambda r, me, rid: [_env("hello", {"worker": me}, rid, r.choice([0, V + 1, 99]))],
     "version"),
    ("report for an unknown trial", lambda r, me, rid: [_env("report", _report(me, 10**9 + rid, 1), rid)],
     "unknown_trial"),
    ("attempt from the future", lambda r, me, rid: [_env(r.choice(["heartbeat", "report", "fail"]), {
        "worker": me, "trial_id": r.randint(1, 4), "attempt": 99, "step": 1, "final": {}, "error": "x"}, rid)],
     "bad_attempt"),
    ("forged worker id", lambda r, me, rid: [_env(r.choice(["request_trial", "heartbeat", "report"]), {
        **_report(f"flood-w{r.randint(0, 1)}", r.randint(1, 4), 1), "step": 1}, rid)], "not_leaseholder"),
]


def _flood(endpoint: str, rng: random.Random) -> dict[str, Any]:
    """Send at least ``TARGET`` malformed frames; collect the replies to those that have an id."""
    ctx = zmq.Context.instance()
    sockets = []
    for i in range(ATTACKERS):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"attacker-{i}".encode())
        sock.setsockopt(zmq.SNDTIMEO, 5000)
        sock.connect(endpoint)
        sockets.append(sock)
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(endpoint)
    ids = itertools.count(1)
    kinds = itertools.cycle(KINDS)
    expected: dict[tuple[int, int], tuple[str, str]] = {}  # (socket, request id) -> (kind, code)
    sent: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    wrong: list[tuple[str, Any]] = []
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    total = 0
    started = time.monotonic()
    deadline = started + 240
    try:
        for _ in range(OVERSIZED):  # over MAXMSGSIZE: libzmq drops them and disconnects the sender
            big.send(_env("report", {"pad": "x" * (DEFAULT_MAX_MESSAGE_BYTES + 100)}, next(ids)))
        while (total < TARGET or expected) and time.monotonic() < deadline:
            for index, sock in enumerate(sockets):
                me = f"attacker-{index}"
                while total < TARGET and sum(1 for s, _ in expected if s == index) < WINDOW:
                    name, frames, code = next(kinds)
                    rid = next(ids)
                    sock.send_multipart(frames(rng, me, rid))
                    sent[name] += 1
                    total += 1
                    if code is not None:
                        expected[(index, rid)] = (name, code)
                    if total % 50 == 0:
                        break
            for sock, _ in poller.poll(10):
                index = sockets.index(sock)
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    env = decode(frames[-1], accept=REPLY_TYPES)
                    name, code = expected.pop((index, env.request_id), ("unexpected reply", "-"))
                    if isinstance(env.message, Error) and env.message.code == code:
                        answered[name] += 1
                    else:
                        wrong.append((name, env.message))
    finally:
        for sock in [*sockets, big]:
            sock.close(linger=0)
    return {"sent": sent, "total": total, "answered": answered, "unanswered": expected, "wrong": wrong,
            "duration_s": time.monotonic() - started}


@pytest.mark.timeout(400)
def test_ten_thousand_malformed_messages_during_a_run(tmp_path: Path) -> None:
    seed = int(os.environ.get("FLOOD_SEED", time.time_ns() % 1_000_000))
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    env = env_with(TOY_STEP_SLEEP_S=0.1, TOY_MAX_STEPS=150)  # some 120 trials of ~0.5 s on two workers
    controller, endpoint = start_controller(TOY, store, env=env)
    host = start_host(TOY, endpoint, ckpt, "flood", 2, env=env)
    wait_until(lambda: any(t.status is TrialStatus.COMPLETED for t in trials(store)), 90, "a first completed trial")

    result = _flood(endpoint, random.Random(seed))

    assert controller.poll() is None, controller.output()  # still up
    assert result["total"] >= 10_000
    assert not result["wrong"], (seed, result["wrong"][:10])
    assert not result["unanswered"], (seed, list(result["unanswered"].values())[:10])
    answerable = {name for name, _, code in KINDS if code is not None}
    assert set(result["answered"]) == answerable
    for name in answerable:  # every one of them was answered with its error
        assert result["answered"][name] == result["sent"][name], name
    assert not finished(store), "the run should still be going on after the flood"

    assert host.wait(240) == 0, host.output()
    assert controller.wait(60) == 0, controller.output()
    with LmdbTrialStore(store, readonly=True) as s:
        assert_complete_lineage(s, ckpt)
        assert not [t for t in s.iter_trials() if any(h[1].startswith("attacker") for h in t.history)]
    assert verify_cli(store, ckpt)["ok"]

    # one log line per kind of trouble (per 60 s window), not one per message
    lines = [line for line in controller.output().splitlines() if "attacker" in line]
    per_code = Counter(m.group(1) for line in lines
                       if (m := re.search(r"(malformed|version|unknown_type|unknown_trial|bad_attempt|"
                                          r"not_leaseholder): ", line)))
    windows = 1 + int(result["duration_s"] // 60)  # the flood's 60 s rate-limit windows
    assert set(per_code) == {"malformed", "version", "unknown_type", "unknown_trial", "bad_attempt",
                             "not_leaseholder"}, lines
    assert all(count <= windows for count in per_code.values()), lines
    assert len(lines) == sum(per_code.values()), lines
