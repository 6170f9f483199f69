"""ZeroMQ endpoints: the controller's ROUTER and a worker's DEALER (docs/design.md §5).

Layer 2. Each endpoint owns exactly one socket, and **a ZeroMQ socket may only be used (and
closed) by the thread that created it**. The endpoints create their socket in ``__init__``,
so *construct an endpoint in the thread that will use it* (e.g. in the transport bridge
thread's ``run``/``on_start``) and call every method except the ``endpoint``/``identity``
attributes from that thread. The methods check this and raise ``RuntimeError`` otherwise.
Contexts are thread-safe; by default both endpoints use ``zmq.Context.instance()`` and never
terminate it (``inproc://`` needs both sides in the same context).

Frames: a worker's DEALER sends one payload frame; the controller's ROUTER sees
``[identity, payload]`` and answers ``[identity, payload]``. The payload is a codec
envelope (``transport/codec.py``). Anything else is malformed.

Delivery is at-most-once per send: ZeroMQ silently drops a frame over ``MAXMSGSIZE`` (and
disconnects the sender, which reconnects by itself), drops replies to peers that are gone, and
loses what was queued on a connection that broke. ``WorkerEndpoint.request`` therefore resends
the same bytes under the same request id until the reply with that id arrives; the controller
handles requests idempotently.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Self

import zmq

from pbt_actors.common.backoff import Backoff
from pbt_actors.model.errors import MessageTooLarge, ProtocolError, RequestTimeout
from pbt_actors.model.protocol import REPLY_TYPES, REQUEST_TYPES, Message
from pbt_actors.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, decode, encode
from pbt_actors.transport.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

ROUTER_HWM = 10_000  # per peer; ROUTER drops past it (a worker resends), never blocks
DEALER_HWM = 1_000  # a worker has at most one request in flight; this only bounds accidents
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5_000
MAX_BACKOFF_S = 30.0
"""Resend waits double from ``timeout_s`` up to this (or ``timeout_s`` if larger)."""
MAX_IDENTITY_BYTES = 255
REOPEN_EVERY = 2
"""A worker replaces its connection after every this many unanswered resends (``_reopen``)."""
TCP_KEEPALIVE_IDLE_S = 30
"""A silent connection is probed after this long (then 3 probes 5 s apart): a vanished host's
connections close, and its workers' routing ids are free for their restart."""


@dataclass(frozen=True)
class Incoming:
    """One frame received by the controller.

    Exactly one of ``message`` and ``error`` is set. On an error, answer
    ``messages.Error(error.code, error.text)`` under ``request_id`` when it is not ``None``;
    when it is ``None`` the sender cannot match a reply, so drop the frame.
    """

    identity: bytes
    request_id: int | None
    message: Message | None
    error: ProtocolError | None
    key: str = ""
    """Who the sender authenticated as: the ZAP ``User-Id`` of its connection (with CURVE and
    ``security.start_authenticator``: the client's public key, Z85); ``""`` without ZAP."""


def _user_id(frame: zmq.Frame) -> str:
    """The ZAP ``User-Id`` of the connection ``frame`` came on (``""``: none)."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:  # no metadata: no ZAP handler answered for this connection
        return ""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def _set_curve_server(sock: zmq.Socket, secret_key: bytes | None, public_key: bytes | None) -> bool:
    if secret_key is None:
        if public_key is not None:
            raise ValueError("curve_public_key needs curve_secret_key")
        return False
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public_key if public_key is not None else zmq.curve_public(secret_key)
    sock.curve_server = True
    return True


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class _Owned:
    """Socket ownership: the creating thread only; closing and ``with`` for both endpoints."""

    _owner: int
    _closed: bool
    _socket: zmq.Socket

    def close(self) -> None:
        """Close the socket (idempotent). Call from the owning thread."""
        if self._closed:
            return
        self._check_thread()
        self._closed = True
        self._socket.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError(f"{type(self).__name__} used from a thread that did not create it "
                               "(ZeroMQ sockets are not thread-safe)")
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")


class ControllerEndpoint(_Owned):
    """The controller's ROUTER: receives requests from many workers, answers each by identity.

    Construct it in the thread that will use it (see the module docstring). ``bind`` may be
    ``tcp://HOST:PORT`` (port ``0`` or ``*`` picks a free one), ``ipc://PATH`` or
    ``inproc://NAME``; ``endpoint`` is the address actually bound.

    Socket options: ``ROUTER_HANDOVER=0``: a routing id belongs to the connection that came
    with it until that connection closes; ZeroMQ ignores a second connection with a live id,
    so nobody can take a live worker's id (and its trials) over; a restarted worker gets in
    once its dead predecessor's connection has closed (the kernel closes it at process exit;
    TCP keepalive finds connections of vanished hosts). ``LINGER=0``, ``MAXMSGSIZE=max_message_bytes``
    (larger frames are dropped by ZeroMQ and their sender disconnected; not applied on
    inproc, where the codec's own size check still rejects them), high-water marks of
    ``ROUTER_HWM``. With ``curve_secret_key`` the socket is a CURVE server; authorising client
    keys is the caller's job (``pbt_actors.transport.curve.start_authenticator`` on the same context).
    ``check_bound`` is called with the address actually bound (``LAST_ENDPOINT``; ``bind`` may say
    ``source;address``, and a name resolves), and an exception from it closes the socket.
    """

    def __init__(self, bind: str, *, context: zmq.Context | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve_secret_key: bytes | None = None, curve_public_key: bytes | None = None,
                 check_bound: Callable[[str], None] | None = None) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self.max_message_bytes = max_message_bytes
        self._owner = threading.get_ident()
        self._closed = False
        self._context = context if context is not None else zmq.Context.instance()
        self._errors = RateLimitedLog(log)
        sock = self._context.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
            sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
            self.curve = _set_curve_server(sock, curve_secret_key, curve_public_key)
            sock.bind(bind)
            self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if check_bound is not None:  # judged on what ZeroMQ bound, not on the text asked for
                check_bound(self.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock

    def recv_batch(self, timeout_s: float, max_batch: int = 256) -> list[Incoming]:
        """Wait up to ``timeout_s`` for a frame, then take whatever else is already queued, up
        to ``max_batch`` frames in all. Returns ``[]`` on timeout. Never raises on bad input:
        a bad frame becomes an ``Incoming`` with ``error`` set (and a rate-limited log line).
        """
        self._check_thread()
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        out: list[Incoming] = []
        if not self._socket.poll(_ms(timeout_s), zmq.POLLIN):
            return out
        while len(out) < max_batch:
            try:
                if self.curve:  # frames, for the connection's metadata: who said it
                    parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    incoming = self._incoming([p.bytes for p in parts])
                    key = _user_id(parts[-1])
                    out.append(replace(incoming, key=key) if key else incoming)
                    continue
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            out.append(self._incoming(frames))
        return out

    def _incoming(self, frames: list[bytes]) -> Incoming:
        identity = frames[0]
        if len(frames) != 2:
            error = ProtocolError("malformed", f"expected 1 payload frame, got {len(frames) - 1}")
        else:
            try:
                env = decode(frames[1], max_bytes=self.max_message_bytes, accept=REQUEST_TYPES)
            except ProtocolError as exc:
                error = exc
            else:
                return Incoming(identity, env.request_id, env.message, None)
        self._errors.warning(error.code, "bad frame from %r: %s", identity[:64], error)
        return Incoming(identity, error.request_id, None, error)

    def send(self, identity: bytes, request_id: int, reply: Message) -> None:
        """Send ``reply`` under ``request_id`` to the peer ``identity``. A peer that is gone (or
        whose queue is full) is not an error: the frame is dropped and the worker resends."""
        self._check_thread()
        data = encode(reply, request_id)
        try:
            self._socket.send_multipart([identity, data], zmq.NOBLOCK)
        except zmq.Again:
            self._errors.warning("send_again", "reply to %r dropped: peer queue full", identity[:64])


class WorkerEndpoint(_Owned):
    """A worker's DEALER, connected to the controller, for one request at a time.

    Construct it in the thread that will use it (see the module docstring). ``identity`` is
    the worker id; it becomes the socket's ``ROUTING_ID``. The controller's ROUTER ignores a
    second connection with an id that is connected already (``ROUTER_HANDOVER=0``): a restarted
    worker takes its place once the old connection has closed.

    Socket options: ``LINGER=0``; ``IMMEDIATE=1`` so that nothing is queued while no
    connection is up (a send then waits for the connection instead of piling duplicate
    resends into a queue that would all be delivered at reconnect; ``inproc://`` ignores it);
    reconnect every ``RECONNECT_IVL_MS`` backing off to ``RECONNECT_IVL_MAX_MS``;
    ``MAXMSGSIZE=max_message_bytes`` for replies. With ``curve_server_key`` it is a CURVE
    client using ``curve_keypair = (public, secret)`` (a fresh one when omitted).
    """

    def __init__(self, connect: str, identity: str, *, context: zmq.Context | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve_server_key: bytes | None = None,
                 curve_keypair: tuple[bytes, bytes] | None = None) -> None:
        raw_id = identity.encode("utf-8")
        if not raw_id or len(raw_id) > MAX_IDENTITY_BYTES or raw_id[0] == 0:
            raise ValueError(f"identity must be 1..{MAX_IDENTITY_BYTES} UTF-8 bytes not starting with NUL")
        if curve_keypair is not None and curve_server_key is None:
            raise ValueError("curve_keypair needs curve_server_key")
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self.identity = identity
        self.connect_to = connect
        self.max_message_bytes = max_message_bytes
        self._owner = threading.get_ident()
        self._closed = False
        # A random start: a restarted worker (same routing id) never mistakes a late reply meant
        # for its previous incarnation for one of its own.
        self._ids = itertools.count(secrets.randbits(48))
        self._errors = RateLimitedLog(log)
        self._context = context if context is not None else zmq.Context.instance()
        self._raw_id = raw_id
        self._curve = (curve_server_key, curve_keypair)
        self.reopened = 0
        """How often the socket was replaced by a fresh connection (see ``request``)."""
        self.refused_reply = ""
        """Why the last reply that came for a pending request was dropped (it failed the
        protocol's schema): the peer is there but its answers are not acceptable; "" after a
        good reply. A caller that gives up says this rather than "no answer"."""
        self._socket = self._open()

    def _open(self) -> zmq.Socket:
        curve_server_key, curve_keypair = self._curve
        connect = self.connect_to
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self._raw_id)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            sock.setsockopt(zmq.SNDHWM, DEALER_HWM)
            sock.setsockopt(zmq.RCVHWM, DEALER_HWM)
            self.curve = curve_server_key is not None
            if curve_server_key is not None:
                public, secret = curve_keypair if curve_keypair is not None else zmq.curve_keypair()
                sock.curve_serverkey = curve_server_key
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(connect)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _reopen(self) -> None:
        """A fresh socket, hence a fresh connection: the controller ignores a connection whose
        routing id it still sees connected (``ROUTER_HANDOVER=0``), e.g. when this worker was
        restarted before its predecessor's connection was noticed closed. Every
        ``REOPEN_EVERY`` unanswered resends the worker tries a new connection."""
        self._socket.close(linger=0)
        self._socket = self._open()
        self.reopened += 1

    def request(self, message: Message, *, timeout_s: float = 5.0, retries: int | None = None) -> Message:
        """Send ``message`` and return the reply that carries its request id.

        Waits ``timeout_s``, then resends the same bytes under the same id, doubling the wait
        each time up to ``MAX_BACKOFF_S`` (or ``timeout_s`` if larger): the wait after send n
        is ``Backoff(timeout_s, 2, cap).delay(n)``, the common backoff. ``retries=None`` resends
        forever (reports: a worker outlives a lost controller); otherwise ``RequestTimeout`` is
        raised once ``retries`` resends went unanswered. Replies with other ids (late answers to
        earlier requests) and undecodable frames are dropped. An ``error`` reply is returned
        like any other (a ``messages.Error``): the caller decides.

        Raises:
            MessageTooLarge: the encoded message is longer than ``max_message_bytes`` (the
                frame limit both sides use): it is never sent, since the controller would drop
                it unseen (``MAXMSGSIZE``) and every resend with it.
            RequestTimeout: ``retries`` resends went unanswered.
        """
        self._check_thread()
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries is not None and retries < 0:
            raise ValueError("retries must be >= 0 or None")
        request_id = next(self._ids)
        data = encode(message, request_id)
        if len(data) > self.max_message_bytes:
            raise MessageTooLarge(message.TYPE, len(data), self.max_message_bytes)
        waits = Backoff(initial_s=timeout_s, factor=2.0, max_s=max(MAX_BACKOFF_S, timeout_s))
        started = time.monotonic()
        deadline = started + waits.delay(0)
        sends, resends = 0, 0
        unsent = True
        while True:
            if unsent and self._try_send(data):
                unsent = False
                sends += 1
            now = time.monotonic()
            if now >= deadline:
                if retries is not None and resends >= retries:
                    raise RequestTimeout(message.TYPE, request_id, sends, now - started)
                resends += 1
                if resends % REOPEN_EVERY == 0:
                    self._reopen()
                wait = waits.delay(resends)
                deadline = now + wait
                unsent = True
                log.debug("no reply to %s %d yet; resending (wait %.1fs)", message.TYPE, request_id, wait)
                continue
            flags = zmq.POLLIN | (zmq.POLLOUT if unsent else 0)
            events = self._socket.poll(_ms(deadline - now), flags)
            if events & zmq.POLLIN:
                reply = self._drain(request_id)
                if reply is not None:
                    return reply

    def _try_send(self, data: bytes) -> bool:
        try:
            self._socket.send(data, zmq.NOBLOCK)
        except zmq.Again:  # no connection yet (IMMEDIATE) or queue full: wait for POLLOUT
            return False
        return True

    def _drain(self, request_id: int) -> Message | None:
        """Read every queued frame; return the reply for ``request_id`` if among them."""
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return None
            if len(frames) != 1:
                self._errors.warning("malformed", "dropped a reply of %d frames (expected 1)", len(frames))
                continue
            try:
                env = decode(frames[0], max_bytes=self.max_message_bytes, accept=REPLY_TYPES)
            except ProtocolError as exc:
                self._errors.warning(exc.code, "dropped an undecodable reply: %s", exc)
                if exc.request_id in (request_id, None):
                    self.refused_reply = str(exc)
                continue
            if env.request_id == request_id:
                self.refused_reply = ""
                return env.message
            log.debug("dropped a stale reply (id %d, waiting for %d)", env.request_id, request_id)

