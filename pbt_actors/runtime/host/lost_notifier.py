"""``LostNotifier``: the host's own line to the controller (its ``hello`` and ``worker_lost``).

Layer 4. A one-thread executor, not a pykka actor: it owns a DEALER socket (ZeroMQ sockets stay
on the thread that made them) and must wake by itself every ``HOST_HELLO_S``, which a pykka
inbox cannot. Its queue holds jobs (functions of the socket), run in order on that thread, so
that a ``worker_lost`` told after an ``announce`` is sent after that ``hello``.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pbt_actors.model.errors import RequestTimeout
from pbt_actors.model.protocol import Ack, Error, Hello, WorkerLost
from pbt_actors.transport.endpoints import WorkerEndpoint

log = logging.getLogger(__name__)

HOST_HELLO_S = 3.0
"""The supervisor repeats its ``hello`` (host id, worker ids) this often: its claim on them at
the controller lasts ``control.session.HOST_LEASE_S`` past the last one."""
REFUSALS = ("host_taken", "wrong_run")
"""Answers to the supervisor's ``hello`` that stop the whole host (docs/protocol.md §4)."""

Job = Callable[[WorkerEndpoint], None]


class LostNotifier:
    """Tells the controller ``worker_lost`` from a thread of its own (which owns the DEALER).

    Each notice is tried 3 times (2 s apart) and then given up (the lease expires instead);
    ``after`` (the restart, if any) runs once the notice was answered or given up.

    It also says ``hello`` for the host (host id, worker ids) at once and every
    ``HOST_HELLO_S``: the controller then knows this connection owns those workers (only it may
    say they are lost), and refuses a second host with the same id. An answer in ``REFUSALS``
    (another live supervisor has this host id; the controller serves another run than the one
    this host joined) goes to ``on_refused`` and the hellos stop. ``run`` is learned from the
    first ``ack`` and sent in every later message. ``announce`` replaces the worker ids (a
    slot restarted under a new id) and says ``hello`` with them at once, in turn with the
    notices.
    """

    TRIES = 3
    TIMEOUT_S = 2.0

    def __init__(self, controller: str, identity: str, endpoint_options: Mapping[str, Any], *, host: str = "",
                 workers: tuple[str, ...] = (), on_refused: Callable[[str], None] | None = None,
                 experiment_file: tuple[str, str] = ("", "")) -> None:
        self.controller, self.identity, self.endpoint_options = controller, identity, dict(endpoint_options)
        self.host, self.workers, self.on_refused = host, workers, on_refused
        self.experiment_file = experiment_file
        """(path, sha256) of the experiment file this host's workers run; ("", "") unknown."""
        self.run = ""
        self.refused: str | None = None
        self.next_hello = time.monotonic()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pbt-supervisor-notifier", daemon=True)
        self.thread.start()

    def tell(self, message: WorkerLost, after: Callable[[], None] | None) -> None:
        """Say ``message`` (in turn), then run ``after`` unless the notifier is stopping."""
        self.queue.put(functools.partial(self._notify, message, after))

    def announce(self, workers: tuple[str, ...]) -> None:
        """The host's worker ids are now ``workers``: say ``hello`` with them (in turn)."""
        self.queue.put(functools.partial(self._announce, tuple(workers)))

    def stop(self, timeout_s: float = 3.0) -> None:
        self.stopping.set()
        self.queue.put(None)
        self.thread.join(timeout_s)

    def _hellos_due(self) -> bool:
        return bool(self.workers) and self.refused is None

    def _run(self) -> None:
        endpoint = WorkerEndpoint(self.controller, self.identity, **self.endpoint_options)
        try:
            while True:
                if self._hellos_due() and time.monotonic() >= self.next_hello:
                    self._hello(endpoint)
                try:
                    job = self.queue.get(timeout=max(0.0, self.next_hello - time.monotonic())
                                         if self._hellos_due() else None)
                except queue.Empty:
                    continue
                if job is None:
                    break
                job(endpoint)
        finally:
            endpoint.close()

    def _announce(self, workers: tuple[str, ...], endpoint: WorkerEndpoint) -> None:
        self.workers = workers
        if self.refused is None:
            self._hello(endpoint)

    def _hello(self, endpoint: WorkerEndpoint) -> None:
        hello = Hello(self.identity, self.host, os.getpid(), "", self.run, self.workers, *self.experiment_file)
        try:
            reply = endpoint.request(hello, timeout_s=self.TIMEOUT_S, retries=0)
        except RequestTimeout:
            reply = None  # the controller is not up (yet): try again later
        self.next_hello = time.monotonic() + HOST_HELLO_S
        if isinstance(reply, Ack) and reply.run:
            self.run = reply.run
        elif isinstance(reply, Error) and reply.code in REFUSALS:
            self.refused = reply.message
            if self.on_refused is not None:
                self.on_refused(f"{reply.code}: {reply.message}")

    def _notify(self, message: WorkerLost, after: Callable[[], None] | None, endpoint: WorkerEndpoint) -> None:
        if self.run:
            message = WorkerLost(message.worker, message.reason, self.run)
        self._send_lost(endpoint, message)
        if after is not None and not self.stopping.is_set():
            after()

    def _send_lost(self, endpoint: WorkerEndpoint, message: WorkerLost) -> None:
        for _ in range(self.TRIES):
            if self.stopping.is_set():
                return
            try:
                endpoint.request(message, timeout_s=self.TIMEOUT_S, retries=0)
                return
            except RequestTimeout:
                continue
        log.warning("controller did not hear that %s was lost; the lease will expire instead", message.worker)
