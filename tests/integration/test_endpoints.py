"""ControllerEndpoint ↔ WorkerEndpoint over real ZeroMQ (tcp loopback, ipc, inproc).

Each controller endpoint lives in its own server thread, which creates, uses and closes it
(ZeroMQ sockets are not thread-safe); worker endpoints live in the test's thread. Waits are
deadlines on events and queues, never sleeps.
"""

from __future__ import annotations

import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pbt_actors.model import wire
from pbt_actors.model.errors import MessageTooLarge, PbtError, RequestTimeout
from pbt_actors.model.protocol import (
    PROTOCOL_VERSION,
    REPLY_TYPES,
    Ack,
    Error,
    Fail,
    Hello,
    Message,
    RequestTrial,
    Stop,
)
from pbt_actors.transport.codec import decode, encode
from pbt_actors.transport.curve import generate_keypair, load_keypair, load_public_key, start_authenticator
from pbt_actors.transport.endpoints import ControllerEndpoint, Incoming, WorkerEndpoint

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[Incoming], Message | None]


def echo_ack(incoming: Incoming) -> Message | None:
    if incoming.error is not None:
        return Error(incoming.error.code, incoming.error.text)
    return Ack()


class Server:
    """A ControllerEndpoint in its own thread, answering with ``handler`` (None: no answer)."""

    def __init__(self, bind: str, context: zmq.Context, handler: Handler = echo_ack, **kwargs: Any) -> None:
        self.bind, self.context, self.handler, self.kwargs = bind, context, handler, kwargs
        self.received: queue.Queue[Incoming] = queue.Queue()
        self.endpoint = ""
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"server {bind}", daemon=True)

    def start(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            endpoint = ControllerEndpoint(self.bind, context=self.context, **self.kwargs)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self.endpoint = endpoint.endpoint
        self._ready.set()
        try:
            while not self._stop.is_set():
                for incoming in endpoint.recv_batch(0.02):
                    self.received.put(incoming)
                    reply = self.handler(incoming)
                    if reply is not None and incoming.request_id is not None:
                        endpoint.send(incoming.identity, incoming.request_id, reply)
        except BaseException as exc:
            self.error = exc
        finally:
            endpoint.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self.error is not None:
            raise self.error

    def next(self, timeout_s: float = 5.0) -> Incoming:
        return self.received.get(timeout=timeout_s)

    def drained(self) -> list[Incoming]:
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # ipc paths are limited to ~107 bytes; pytest's tmp_path can be longer
    path = Path("/tmp") / f"pbt-ipc-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TRANSPORTS = ["tcp", "ipc", "inproc"]


def address(transport: str, short_dir: Path, *, fixed: bool = False) -> str:
    """A bind address; ``fixed`` gives one a worker can connect to before it is bound."""
    if transport == "tcp":
        return f"tcp://127.0.0.1:{free_tcp_port() if fixed else 0}"
    if transport == "ipc":
        return f"ipc://{short_dir}/c-{uuid.uuid4().hex[:8]}.sock"
    return f"inproc://c-{uuid.uuid4().hex}"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server._thread.is_alive():
            server.stop()


# --- request / reply ---------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_reply(transport: str, context: zmq.Context, short_dir: Path, servers: list[Server]) -> None:
    def handler(incoming: Incoming) -> Message | None:
        assert isinstance(incoming.message, Hello | RequestTrial)
        return Stop(incoming.request_id or 1, f"echo {incoming.message.worker}")

    server = Server(address(transport, short_dir), context, handler).start()
    servers.append(server)
    assert server.endpoint.startswith(f"{transport}://")
    assert not server.endpoint.endswith(":0")
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
        seen = []
        for message in (Hello("w1", "host", 1), RequestTrial("w1"), RequestTrial("w1")):
            reply = worker.request(message, timeout_s=5, retries=3)
            incoming = server.next()
            assert incoming.identity == b"w1"
            assert incoming.message == message
            assert incoming.error is None
            assert reply == Stop(incoming.request_id or 1, "echo w1")
            seen.append(incoming.request_id)
        assert len(set(seen)) == 3  # a fresh id per request


def test_many_workers(context: zmq.Context, short_dir: Path, servers: list[Server]) -> None:
    server = Server("tcp://127.0.0.1:0", context).start()
    servers.append(server)
    workers = [WorkerEndpoint(server.endpoint, f"w{i}", context=context) for i in range(5)]
    try:
        for _ in range(3):
            for w in workers:
                assert w.request(RequestTrial(w.identity), timeout_s=5, retries=3) == Ack()
        assert {i.identity for i in server.drained()} == {f"w{i}".encode() for i in range(5)}
    finally:
        for w in workers:
            w.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_worker_first_controller_later(transport: str, context: zmq.Context, short_dir: Path,
                                       servers: list[Server]) -> None:
    bind = address(transport, short_dir, fixed=True)
    requesting = threading.Event()
    result: queue.Queue[object] = queue.Queue()

    def worker_thread() -> None:
        try:
            with WorkerEndpoint(bind, "early", context=context) as worker:
                requesting.set()
                result.put(worker.request(Hello("early"), timeout_s=0.2, retries=None))
        except BaseException as exc:
            result.put(exc)

    thread = threading.Thread(target=worker_thread, daemon=True)
    thread.start()
    assert requesting.wait(10)
    server = Server(bind, context).start()
    servers.append(server)
    assert result.get(timeout=20) == Ack()
    thread.join(5)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_resend_survives_a_controller_restart(transport: str, context: zmq.Context, short_dir: Path,
                                              servers: list[Server]) -> None:
    """The first controller receives the request but dies before answering; the worker resends
    the same bytes under the same id to its successor on the same address."""
    bind = address(transport, short_dir, fixed=True)
    first = Server(bind, context, handler=lambda _: None).start()
    servers.append(first)
    requesting = threading.Event()
    result: queue.Queue[object] = queue.Queue()

    def worker_thread() -> None:
        try:
            with WorkerEndpoint(bind, "w1", context=context) as worker:
                requesting.set()
                result.put(worker.request(RequestTrial("w1"), timeout_s=0.3, retries=None))
        except BaseException as exc:
            result.put(exc)

    thread = threading.Thread(target=worker_thread, daemon=True)
    thread.start()
    assert requesting.wait(10)
    lost = first.next(timeout_s=10)  # it arrived, and was never answered
    first.stop()
    second = Server(bind, context).start()
    servers.append(second)
    assert result.get(timeout=20) == Ack()
    resent = second.next(timeout_s=5)
    assert (resent.identity, resent.request_id, resent.message) == (lost.identity, lost.request_id, lost.message)
    thread.join(5)


def test_resend_same_id_when_reply_withheld(context: zmq.Context, servers: list[Server]) -> None:
    seen: dict[int | None, int] = {}

    def second_time_lucky(incoming: Incoming) -> Message | None:
        seen[incoming.request_id] = seen.get(incoming.request_id, 0) + 1
        return Ack() if seen[incoming.request_id] >= 3 else None

    server = Server("tcp://127.0.0.1:0", context, second_time_lucky).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
        assert worker.request(Hello("w1"), timeout_s=0.1, retries=5) == Ack()
    copies = server.drained()
    assert len(copies) == 3
    assert len({c.request_id for c in copies}) == 1


def test_timeout_after_retries(context: zmq.Context, servers: list[Server]) -> None:
    server = Server("tcp://127.0.0.1:0", context, handler=lambda _: None).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker, \
            pytest.raises(RequestTimeout) as info:
        worker.request(Hello("w1"), timeout_s=0.1, retries=2)
    assert info.value.sends == 3
    assert info.value.waited_s >= 0.1 + 0.2 + 0.4 - 0.05  # the wait doubles
    assert len({i.request_id for i in server.drained()}) == 1


# --- stale and garbage replies --------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stale_and_garbage_replies_are_dropped(transport: str, context: zmq.Context, short_dir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(address(transport, short_dir))
    bind = router.getsockopt_string(zmq.LAST_ENDPOINT)
    done = threading.Event()
    problems: list[BaseException] = []

    def fake_controller() -> None:  # answers junk first, then the right reply
        try:
            while not done.is_set():
                if not router.poll(50):
                    continue
                identity, payload = router.recv_multipart()
                request_id = decode(payload).request_id
                router.send_multipart([identity, encode(Stop(1, "stale"), request_id - 1)])
                router.send_multipart([identity, encode(Stop(1, "stale"), request_id + 1)])
                router.send_multipart([identity, b"\xc1garbage"])
                router.send_multipart([identity, b"two", b"frames"])
                router.send_multipart([identity, encode(Hello("not a reply"), request_id)])
                router.send_multipart([identity, wire.pack({"v": PROTOCOL_VERSION + 1, "t": "ack",
                                                            "id": request_id, "b": {}})])
                router.send_multipart([identity, encode(Ack(), request_id)])
        except BaseException as exc:
            problems.append(exc)

    thread = threading.Thread(target=fake_controller, daemon=True)
    thread.start()
    try:
        with caplog.at_level("WARNING", logger="pbt_actors.transport.endpoints"), \
                WorkerEndpoint(bind, "w1", context=context) as worker:
            for _ in range(3):
                assert worker.request(Hello("w1"), timeout_s=5, retries=2) == Ack()
    finally:
        done.set()
        thread.join(5)
        router.close()
    assert not problems
    warnings = [r.getMessage() for r in caplog.records if r.name == "pbt_actors.transport.endpoints"]
    # one line per error code per window, however many bad frames arrived
    assert 1 <= len(warnings) <= 3, warnings


def test_error_reply_is_returned(context: zmq.Context, servers: list[Server]) -> None:
    server = Server("tcp://127.0.0.1:0", context, handler=lambda _: Error("unknown_trial", "no trial 9")).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
        assert worker.request(Hello("w1"), timeout_s=5, retries=1) == Error("unknown_trial", "no trial 9")


# --- hostile input at the controller --------------------------------------------------------------
def test_oversized_frame_is_dropped_and_the_worker_recovers(context: zmq.Context, servers: list[Server]) -> None:
    server = Server("tcp://127.0.0.1:0", context, max_message_bytes=4096).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
        assert worker.request(Hello("w1"), timeout_s=5, retries=2) == Ack()
        assert server.next().message == Hello("w1")
        with pytest.raises(RequestTimeout):
            worker.request(Fail("w1", 1, 1, "x" * 10_000), timeout_s=0.3, retries=0)
        # the DEALER was disconnected and reconnects by itself; a normal request goes through
        assert worker.request(RequestTrial("w1"), timeout_s=0.5, retries=20) == Ack()
    arrived = server.drained()
    # ZeroMQ dropped the big frame itself (MAXMSGSIZE): not even a decode error reached us
    assert all(i.error is None for i in arrived), arrived
    assert {i.message for i in arrived} == {RequestTrial("w1")}


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_an_oversized_request_is_refused_before_sending(transport: str, context: zmq.Context, short_dir: Path,
                                                         servers: list[Server]) -> None:
    # hardening item 11: the controller drops it unseen (MAXMSGSIZE) and the worker used to
    # resend it forever; now the worker refuses it at once and nothing goes on the wire
    server = Server(address(transport, short_dir), context, max_message_bytes=4096).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context, max_message_bytes=4096) as worker:
        big = Fail("w1", 1, 1, "x" * 10_000)
        started = time.monotonic()
        with pytest.raises(MessageTooLarge) as raised:
            worker.request(big, timeout_s=5, retries=None)  # retries=None: it would resend forever
        assert time.monotonic() - started < 1.0
        assert isinstance(raised.value, PbtError)
        assert (raised.value.message_type, raised.value.limit) == ("fail", 4096)
        assert raised.value.size > 4096
        assert str(raised.value) == (f"fail message is {raised.value.size} bytes encoded, over the 4096-byte "
                                     f"frame limit; it was not sent")
        # the socket is fine and the big message never went out
        assert worker.request(Hello("w1"), timeout_s=5, retries=2) == Ack()
    assert [i.message for i in server.drained()] == [Hello("w1")]


def test_oversized_frame_inproc_is_rejected_by_the_codec(context: zmq.Context, servers: list[Server]) -> None:
    server = Server(f"inproc://big-{uuid.uuid4().hex}", context, max_message_bytes=4096).start()
    servers.append(server)
    with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
        with pytest.raises(RequestTimeout):  # no id could be read: nothing to answer
            worker.request(Fail("w1", 1, 1, "x" * 10_000), timeout_s=0.2, retries=0)
        incoming = server.next()
        assert incoming.error is not None and incoming.error.code == "malformed"
        assert incoming.request_id is None
        assert worker.request(Hello("w1"), timeout_s=5, retries=2) == Ack()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_malformed_payloads_become_errors(transport: str, context: zmq.Context, short_dir: Path,
                                          servers: list[Server]) -> None:
    server = Server(address(transport, short_dir), context).start()
    servers.append(server)
    raw = context.socket(zmq.DEALER)
    raw.linger = 0
    raw.routing_id = b"mallory"
    raw.connect(server.endpoint)
    try:
        cases: list[tuple[list[bytes], str, int | None]] = [
            ([b"\xc1\xc1"], "malformed", None),
            ([wire.pack([1, 2, 3])], "malformed", None),
            ([b"", encode(Hello("m"), 11)], "malformed", None),  # REQ-style empty delimiter
            ([encode(Hello("m"), 12), b"extra"], "malformed", None),
            ([wire.pack({"v": PROTOCOL_VERSION, "t": "hello", "id": 13, "b": {"worker": 5}})], "malformed", 13),
            ([wire.pack({"v": 99, "t": "hello", "id": 14, "b": {}})], "version", 14),
            ([wire.pack({"v": PROTOCOL_VERSION, "t": "launch_missiles", "id": 15, "b": {}})], "unknown_type", 15),
            ([encode(Ack(), 16)], "unknown_type", 16),  # a reply type sent as a request
        ]
        for frames, code, request_id in cases:
            raw.send_multipart(frames)
            incoming = server.next()
            assert incoming.identity == b"mallory"
            assert incoming.message is None
            assert incoming.error is not None and incoming.error.code == code, (frames, incoming)
            assert incoming.request_id == request_id
            if request_id is not None:  # answerable: the server replied error under that id
                assert raw.poll(5000)
                env = decode(raw.recv(), accept=REPLY_TYPES)
                assert env.request_id == request_id
                assert env.message == Error(code, incoming.error.text)
        # the controller is unharmed
        with WorkerEndpoint(server.endpoint, "w1", context=context) as worker:
            assert worker.request(Hello("w1"), timeout_s=5, retries=2) == Ack()
    finally:
        raw.close()


def test_a_live_identity_cannot_be_taken_over(context: zmq.Context, servers: list[Server]) -> None:
    """ROUTER_HANDOVER=0: while the first connection with an id is open, a second one with the
    same id is ignored (its frames never arrive) and the first keeps working; once the first
    closes, a restarted worker with that id gets through."""
    server = Server("tcp://127.0.0.1:0", context).start()
    servers.append(server)
    old = WorkerEndpoint(server.endpoint, "w1", context=context)
    assert old.request(Hello("w1"), timeout_s=5, retries=2) == Ack()
    with WorkerEndpoint(server.endpoint, "w1", context=context) as new:
        with pytest.raises(RequestTimeout):
            new.request(Hello("w1", pid=2), timeout_s=0.3, retries=1)
        assert old.request(Hello("w1"), timeout_s=5, retries=2) == Ack()  # the owner is unharmed
    old.close()
    with WorkerEndpoint(server.endpoint, "w1", context=context) as restarted:
        assert restarted.request(Hello("w1", pid=3), timeout_s=0.5, retries=20) == Ack()


# --- ownership and arguments ----------------------------------------------------------------------
def test_endpoints_refuse_other_threads(context: zmq.Context) -> None:
    controller = ControllerEndpoint("inproc://owned", context=context)
    worker = WorkerEndpoint("inproc://owned", "w1", context=context)
    errors: list[BaseException] = []

    def misuse() -> None:
        for call in (lambda: controller.recv_batch(0), lambda: worker.request(Hello("w1"), timeout_s=0.1),
                     controller.close, worker.close):
            try:
                call()
            except RuntimeError as exc:
                errors.append(exc)

    thread = threading.Thread(target=misuse)
    thread.start()
    thread.join(10)
    assert len(errors) == 4
    assert controller.endpoint == "inproc://owned"  # plain attribute: readable anywhere
    worker.close()
    controller.close()
    controller.close()  # idempotent
    with pytest.raises(RuntimeError):
        controller.recv_batch(0)


def test_recv_batch_limits(context: zmq.Context) -> None:
    with ControllerEndpoint("inproc://batch", context=context) as controller, \
            WorkerEndpoint("inproc://batch", "w1", context=context) as worker:
        assert controller.recv_batch(0.01) == []
        for i in range(10):
            worker._socket.send(encode(Hello("w1"), i))
        got: list[Incoming] = []
        first = controller.recv_batch(5, max_batch=4)
        assert len(first) == 4
        got.extend(first)
        while len(got) < 10:
            batch = controller.recv_batch(5, max_batch=100)
            assert batch
            got.extend(batch)
        assert [i.request_id for i in got] == list(range(10))
        controller.send(b"nobody-here", 1, Ack())  # unroutable: dropped, no exception


@pytest.mark.parametrize("identity", ["", "\x00abc", "x" * 256])
def test_bad_identities(identity: str, context: zmq.Context) -> None:
    with pytest.raises(ValueError):
        WorkerEndpoint("inproc://x", identity, context=context)


# --- CURVE -----------------------------------------------------------------------------------------
@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Any]:
    keys = tmp_path / "keys"
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    server_public_file, server_secret_file = generate_keypair(keys, "controller")
    good_public_file, good_secret_file = generate_keypair(keys, "good")
    _, rogue_secret_file = generate_keypair(keys, "rogue")
    shutil.copy(good_public_file, authorized / good_public_file.name)
    assert (server_secret_file.stat().st_mode & 0o777) == 0o600
    return {
        "server": load_keypair(server_secret_file),
        "server_public": load_public_key(server_public_file),
        "good": load_keypair(good_secret_file),
        "rogue": load_keypair(rogue_secret_file),
        "authorized": authorized,
        "server_public_file": server_public_file,
    }


def test_load_keypair_refuses_public_file(curve_keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        load_keypair(curve_keys["server_public_file"])
    assert curve_keys["server"][0] == curve_keys["server_public"]


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_curve(transport: str, curve_keys: dict[str, Any], short_dir: Path, servers: list[Server]) -> None:
    server_ctx = zmq.Context()
    client_ctx = zmq.Context()
    auth = start_authenticator(server_ctx, curve_keys["authorized"])
    try:
        public, secret = curve_keys["server"]
        server = Server(address(transport, short_dir), server_ctx,
                        curve_secret_key=secret, curve_public_key=public).start()
        servers.append(server)
        with WorkerEndpoint(server.endpoint, "good", context=client_ctx,
                            curve_server_key=curve_keys["server_public"],
                            curve_keypair=curve_keys["good"]) as good:
            assert good.curve
            assert good.request(Hello("good"), timeout_s=5, retries=2) == Ack()
        with WorkerEndpoint(server.endpoint, "rogue", context=client_ctx,
                            curve_server_key=curve_keys["server_public"],
                            curve_keypair=curve_keys["rogue"]) as rogue, pytest.raises(RequestTimeout):
            rogue.request(Hello("rogue"), timeout_s=0.3, retries=1)
        with WorkerEndpoint(server.endpoint, "plain", context=client_ctx) as plain, pytest.raises(RequestTimeout):
            plain.request(Hello("plain"), timeout_s=0.3, retries=1)
        with WorkerEndpoint(server.endpoint, "ephemeral", context=client_ctx,
                            curve_server_key=curve_keys["server_public"]) as unknown, pytest.raises(RequestTimeout):
            unknown.request(Hello("ephemeral"), timeout_s=0.3, retries=1)
        assert [i.identity for i in server.drained()] == [b"good"]
        server.stop()
    finally:
        auth.stop()
        server_ctx.destroy(linger=0)
        client_ctx.destroy(linger=0)
