"""The controller shell: a pykka actor around ``ControllerCore`` and a ZeroMQ bridge thread.

Layer 4. ``ControllerActor`` serialises all access to the core (and so to the LMDB write
transaction, which must stay on one thread: the actor's). The **bridge** thread owns the
ROUTER socket: it drains up to a few hundred requests per poll, passes them through the
``ProtocolSession`` (control/session.py: reply cache, long poll, sender check), hands the batch
it forms to the actor as *one* batch (one LMDB commit, one fsync), and sends the replies only
after that commit, so every ``ack`` a worker sees is durable. A periodic tick expires leases.

The bridge, the handle and the retention collector call the actor through its pykka proxy
(``controller.handle_batch(batch).get()``), as ``ask``s: each needs the answer (replies go out
only after the commit). A message is a whole batch, not a request, which keeps one commit per burst.

``Controller.start(...)`` is the embedding API: it returns a ``ControllerHandle`` with the
bound endpoint, ``wait(timeout)`` and ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pykka

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.estimate import read_estimate
from pbt_actors.control.progress import best_completed
from pbt_actors.control.retention_rules import plan_retention
from pbt_actors.control.session import ProtocolSession, Round
from pbt_actors.model.errors import CheckpointStoreFault, StoreFull
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import Error, Message, Reply, Report
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.runtime.controller.checkpoint_collector import Collector, Deleter, record_with_retries, uris_of
from pbt_actors.runtime.controller.pin_requests import apply_requests, requests_folder
from pbt_actors.storage.trial_store import META_EXPERIMENT_FILE, TrialStore
from pbt_actors.transport.endpoints import ControllerEndpoint

log = logging.getLogger(__name__)

TICK_S = 0.25
POLL_S = 0.05
_T = TypeVar("_T")


@dataclass(frozen=True)
class StatusSnapshot:
    """A consistent summary of the run, read on the actor's thread."""

    total: int
    by_status: dict[str, int]
    best: Trial | None
    running_workers: list[str]
    finished: bool
    run_id: str = ""
    leased_steps: int = 0
    """Steps of the trials leased so far (``control/budget.py``), for the progress line."""
    estimate: int | None = None
    """Trials the run will complete, re-estimated from its frontier (``control/estimate.py``)."""


class ControllerActor(pykka.ThreadingActor):
    """Serialises the core. The store is opened in ``on_start`` (LMDB: on this thread).

    Called through its pykka proxy (``handle_batch``, ``tick``, ``status``, ...): each call is
    one message, run on the actor's thread, its result a future.
    """

    def __init__(self, open_store: Callable[[], TrialStore], experiment: Experiment | None,
                 clock: Callable[[], float] = time.time, startup_errors: list[BaseException] | None = None,
                 meta: Mapping[str, Any] | None = None, pin_requests: Path | None = None) -> None:
        super().__init__()
        self.pin_requests = pin_requests
        """Where ``pbt-actors pin`` leaves requests while this controller holds the store."""
        self.meta = dict(meta or {})
        """Meta entries written once the store accepted the experiment (the experiment file's
        path and hash: ``replay`` defaults to it); a refused start writes none."""
        self._open_store = open_store
        self.experiment = experiment
        self._clock = clock
        self.core: ControllerCore | None = None
        self.startup_errors = startup_errors if startup_errors is not None else []
        self.fatal: StoreFull | CheckpointStoreFault | None = None
        """Set when the store's disk filled up (``StoreFull``): the store holds its last committed
        state, and every later request raises this instead of touching it (the controller stops
        serving; the CLI exits with ``EXIT_STORE_FULL``). Likewise once a worker reported that
        the checkpoint store cannot be written (``CheckpointStoreFault``, ``EXIT_CHECKPOINT_STORE``):
        the batch that said so was committed and answered; nothing after it is served."""

    def on_start(self) -> None:
        # A failure here (unwritable store folder, another experiment's store, ...) is the
        # user's to fix, not a crash: it is kept and raised to whoever asks first (the
        # ``Controller.start`` caller, who then stops this actor), instead of letting pykka
        # log it as an unhandled actor exception with a traceback.
        try:
            store = self._open_store()
            try:
                self.core = ControllerCore(store, self.experiment, now=self._clock())
                for key, value in self.meta.items():
                    store.put_meta(key, value)
            except BaseException:
                store.close()
                raise
        except Exception as exc:
            self.startup_errors.append(exc)
        except BaseException as exc:  # pykka runs neither on_failure nor on_stop for this
            self.startup_errors.append(exc)
            raise

    def on_stop(self) -> None:
        if self.core is not None:
            self.core.store.close()

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        log.error("controller actor died: %s", exception_value)
        if self.core is not None:
            self.core.store.close()

    def _serving(self) -> ControllerCore:
        """The core, or why there is none to serve with (a failed start, a full disk)."""
        if self.core is None:
            raise self.startup_errors[-1] if self.startup_errors else RuntimeError("controller has no store")
        if self.fatal is not None:
            raise self.fatal
        return self.core

    def _committing(self, write: Callable[[ControllerCore], _T]) -> _T:
        """Run ``write`` on the core; a full disk makes the controller stop serving."""
        try:
            core = self._serving()
            result = write(core)
        except StoreFull as exc:
            log.info("the store's disk is full; the controller stops serving: %s", exc)
            self.fatal = exc
            raise
        if core.checkpoint_store_fault is not None and self.fatal is None:
            why = _last_line(core.checkpoint_store_fault).removeprefix("CheckpointStoreFault: ")
            self.fatal = CheckpointStoreFault(f"a worker could not write its checkpoint: {why}")
            log.error("%s; the controller stops serving (no trial is charged for it)", self.fatal)
        return result

    def handle_batch(self, messages: list[Message]) -> list[Reply]:
        """Apply a batch of requests in one commit; a reply for each, in order."""
        return self._committing(lambda core: core.handle_batch(messages, self._clock()))

    def tick(self) -> bool:
        """Expire leases; whether any trial was released (parked requests may now get one)."""
        return bool(self._committing(lambda core: core.tick(self._clock())))

    def record_collected(self, trial_ids: list[int]) -> list[int]:
        """Record these trials' checkpoints as collected (their files are gone), in one commit."""
        return self._committing(lambda core: record_with_retries(core.store, trial_ids, self._clock()))

    def plan_retention(self) -> list[tuple[int, str]]:
        """Which checkpoints may be deleted now: ``[(trial id, uri)]`` (a short read)."""
        core = self._serving()
        folder = self.pin_requests
        if folder is not None:  # first: no deletion planned from here on can take a pinned file
            self._committing(lambda c: apply_requests(c.store, folder))
        if not core.experiment.retention.enabled:
            return []
        plan = plan_retention(core.store, core.experiment)
        return uris_of(core.store, plan.delete, core.experiment.name)

    def status(self) -> StatusSnapshot:
        core = self._serving()
        store = core.store
        running = [t.lease.worker for t in store.trials(store.ids_with_status(TrialStatus.RUNNING)) if t.lease]
        return StatusSnapshot(
            total=store.count(), by_status={s.value: store.count(s) for s in TrialStatus},
            best=best_completed(store, core.experiment), running_workers=sorted(running),
            finished=core.finished, run_id=core.run_id, leased_steps=core.leased_steps,
            estimate=read_estimate(store, core.experiment),
        )


def _last_line(text: str) -> str:
    """The last line of an error text (a traceback ends with the exception's own words)."""
    lines = text.strip().splitlines()
    return lines[-1][:500] if lines else "(no error text)"


class _Bridge(threading.Thread):
    """Owns the ROUTER socket (created on this thread) and moves frames between it, the
    protocol session and the actor.

    Every protocol rule (reply cache, resends, long-poll parking, the sender check, who was
    told ``done``) is ``ProtocolSession``'s, pure and unit-tested without sockets; this thread
    only receives, asks the session what to do, asks the actor to handle the batch the session
    forms, and sends what the session says, in that order (replies after the core committed).
    """

    def __init__(self, actor: pykka.ActorRef[ControllerActor], bind: str, endpoint_options: dict[str, Any],
                 run_id: str | None = None, experiment_file: tuple[str, str] = ("", "")) -> None:
        super().__init__(name="pbt-controller-bridge", daemon=True)
        self.controller = actor.proxy()
        self.bind = bind
        self.endpoint_options = endpoint_options
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.address: str | None = None
        self.startup_error: BaseException | None = None
        self.fatal: StoreFull | CheckpointStoreFault | None = None
        """The store's disk filled up, or the checkpoint store cannot be written: this thread
        stopped serving (see ``ControllerActor.fatal``)."""
        self.after_reports: Callable[[], None] | None = None
        """Called after a batch holding reports was committed (the retention collector's nudge)."""
        self.session = ProtocolSession(clock=time.monotonic, run_id=run_id, experiment_file=experiment_file)
        """The protocol rules; monotonic time, as parking measures intervals, not dates. With
        the store's run id: workers of another run are refused, hosts own their workers."""

    def run(self) -> None:
        try:
            endpoint = ControllerEndpoint(self.bind, **self.endpoint_options)
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            return
        self.address = endpoint.endpoint
        self.ready.set()
        next_tick = time.monotonic() + TICK_S
        try:
            while not self.stop_event.is_set() and self.fatal is None:
                incoming = endpoint.recv_batch(POLL_S)
                if incoming:
                    self._serve(endpoint, incoming)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    try:
                        released = self.controller.tick().get(timeout=30)
                    except pykka.ActorDeadError:
                        log.error("controller actor is gone; bridge stops")
                        return
                    except (StoreFull, CheckpointStoreFault) as exc:
                        self.fatal = exc
                        return
                    self._exchange(endpoint, self.session.tick(released=released))
        finally:
            endpoint.close()

    def _serve(self, endpoint: ControllerEndpoint, incoming: list[Any]) -> None:
        requests: list[tuple[bytes, int, Message]] = []
        for item in incoming:
            if item.error is not None:  # the endpoint has logged it (once per kind per window)
                if item.request_id is not None:
                    endpoint.send(item.identity, item.request_id, Error(item.error.code, str(item.error)))
                continue
            requests.append((item.identity, item.request_id, item.message))
        # with CURVE, who said it (the ZAP User-Id: the client's public key) for the key binding
        keys = {item.identity: item.key for item in incoming if item.key}
        self._exchange(endpoint, self.session.receive(requests, keys=keys or None))

    def _exchange(self, endpoint: ControllerEndpoint, step: Round) -> None:
        """Send the session's immediate answers, have the actor handle its batch, send the rest."""
        for out in step.send:
            endpoint.send(out.peer, out.request_id, out.reply)
        if not step.messages:
            return
        try:
            replies: list[Reply] = self.controller.handle_batch(step.messages).get(timeout=60)
        except (StoreFull, CheckpointStoreFault) as exc:  # nothing of the batch committed: answer none, stop serving
            self.fatal = exc
            return
        except Exception as exc:  # the actor is the one that must never die of input
            log.exception("controller failed a batch of %d requests", len(step.messages))
            replies = [Error("internal", f"{type(exc).__name__}: {exc}") for _ in step.messages]
        for out in self.session.answer(step, replies):
            endpoint.send(out.peer, out.request_id, out.reply)
        if self.after_reports is not None and any(isinstance(m, Report) for m in step.messages):
            self.after_reports()


class ControllerHandle:
    """A running controller embedded in this process."""

    def __init__(self, actor: pykka.ActorRef[ControllerActor], bridge: _Bridge,
                 collector: Collector | None = None) -> None:
        self.actor = actor
        self.bridge = bridge
        self.collector = collector
        """The retention collector (None when retention is off or no deleter was given)."""

    @property
    def endpoint(self) -> str:
        assert self.bridge.address is not None
        return self.bridge.address

    def peers_not_done(self) -> set[str]:
        """Workers that talked to us but have not been told ``done`` yet (for a clean exit)."""
        return self.bridge.session.peers_not_done()

    @property
    def fatal(self) -> StoreFull | CheckpointStoreFault | None:
        """Why the controller stopped serving before the run finished (its store's disk filled
        up), or None."""
        return self.bridge.fatal

    def status(self, timeout_s: float = 30) -> StatusSnapshot:
        """A summary of the run.

        Raises:
            StoreFull: the store's disk filled up and the controller stopped serving.
            CheckpointStoreFault: a worker could not write its checkpoint; the controller stopped
                serving.
        """
        if self.bridge.fatal is not None:
            raise self.bridge.fatal
        try:
            snapshot: StatusSnapshot = self.bridge.controller.status().get(timeout=timeout_s)
        except (StoreFull, CheckpointStoreFault) as exc:  # the actor knew first: stopping need not wait
            self.bridge.fatal = self.bridge.fatal or exc
            raise
        return snapshot

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2) -> bool:
        """Block until the experiment has finished (True) or the timeout passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            if self.status().finished:
                return True
            self.bridge.stop_event.wait(poll_s)
        return False

    def stop(self) -> None:
        self.bridge.stop_event.set()
        self.bridge.join(timeout=10)
        if self.collector is not None and self.actor.is_alive():
            self.collector.stop(final_pass=self.bridge.fatal is None)  # a finished run keeps only its best
        if self.actor.is_alive():
            self.actor.stop(timeout=30)


class Controller:
    """Embedding API: ``Controller.start(experiment, store_dir, bind)``."""

    @staticmethod
    def start(experiment: Experiment | None, store: str | Path | Callable[[], TrialStore],
              bind: str = "tcp://127.0.0.1:0", *, endpoint_options: dict[str, Any] | None = None,
              clock: Callable[[], float] = time.time, checkpoint_delete: Deleter | None = None,
              retention_interval_s: float = 5.0, meta: Mapping[str, Any] | None = None) -> ControllerHandle:
        """Open (or resume) the store, start the actor and the bridge, return a handle.

        ``store`` is a folder (an LMDB store is created or resumed there) or a factory
        returning any ``TrialStore`` (called on the actor's thread). ``checkpoint_delete``
        deletes one checkpoint by uri (``runtime.controller.checkpoint_collector.local_deleter(root)``, or a
        ``CheckpointStore``'s ``delete``): with it, and retention on in the experiment, a
        collector thread deletes checkpoints no trial can need any more, after completions
        and every ``retention_interval_s``; without it the controller keeps every file.
        """
        pin_requests = None
        if callable(store):
            open_store = store
        else:
            path = Path(store)
            pin_requests = requests_folder(path)

            def open_store() -> TrialStore:
                from pbt_actors.storage.lmdb_store import LmdbTrialStore

                return LmdbTrialStore(path)

        errors: list[BaseException] = []
        actor = ControllerActor.start(open_store, experiment, clock, errors, meta=meta, pin_requests=pin_requests)
        try:
            controller = actor.proxy()
            snapshot: StatusSnapshot = controller.status().get(timeout=60)
        except pykka.ActorDeadError:
            raise errors[0] if errors else RuntimeError("controller failed to start (see log)") from None
        except BaseException:  # the store could not be opened: its error, and no actor left behind
            if actor.is_alive():
                actor.stop(timeout=30)
            raise
        record = (meta or {}).get(META_EXPERIMENT_FILE)  # the file this controller was started from
        experiment_file = ((str(record.get("path", "")), str(record.get("sha256", "")))
                           if isinstance(record, Mapping) else ("", ""))
        bridge = _Bridge(actor, bind, dict(endpoint_options or {}), run_id=snapshot.run_id,
                         experiment_file=experiment_file)
        collector = None
        if checkpoint_delete is not None:  # plans are empty while the experiment has retention off
            collector = Collector(lambda: controller.plan_retention().get(timeout=60),
                                  lambda ids: controller.record_collected(ids).get(timeout=60),
                                  checkpoint_delete, retention_interval_s)
            bridge.after_reports = collector.nudge
        bridge.start()
        bridge.ready.wait(30)
        if bridge.startup_error is not None:
            actor.stop()
            raise bridge.startup_error
        if collector is not None:
            collector.start()
        return ControllerHandle(actor, bridge, collector)
